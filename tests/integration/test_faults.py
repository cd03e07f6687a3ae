"""Fault tests: real workers, a real redis-server, real podman
containers, and faults made the hard way: SIGKILL, SIGSTOP, SIGTERM, a
Redis that goes away, cancels.  Each test checks the contract's two
promises after the fault: nothing lost, and exactly one recorded result
per job.

Fleet.ini gives every worker heartbeat_interval 1, heartbeat_ttl 3,
reaper_interval 1 and stats_interval 1, so a dead worker is reaped within
about four seconds and a cancel is seen within one.

  1. SIGKILL mid-build (podman): re-run by another worker within ttl +
     reaper interval, the dead worker's container removed, one result;
     and the reaper's orphan sweep on its own.
  2. Redis stopped or killed (AOF) during builds: every result arrives
     once; an outage longer than the ttl reaps no live worker; replies
     lost on the way back (a proxy drops them) make the worker send its
     commands again, and nothing happens twice.
  3. SIGTERM: drained within drain_timeout, or stopped and put back
     (exec and podman, and SIGTERM then SIGINT); exit 0; nothing lost.
  4. Cancel a queued and a running job (podman).
  5. A stale worker (SIGSTOP past its lease, SIGCONT) cannot overwrite the
     result of the worker that took over, nor touch its container.
  6. Soak: 300 builds, one of four workers SIGKILLed every 2 s.

Builds that must outlive a fault hang (the test image's mode=hang, or an
exec script that ignores SIGTERM); the test then makes the profile or the
script quick, so the next attempt ends on its own.
"""
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest

from tests.harness import (SLOW, Fleet, RedisServer, dead, make_profile, nskey, poll, results, stream_events,
                           submit, wait_result, wid)


HB_TTL = 3          # Fleet.ini heartbeat_ttl
REAPER = 1          # Fleet.ini reaper_interval
STATS = 1           # Fleet.ini stats_interval


# ---------------------------------------------------------------- helpers


def replace_file(path, text, mode=None):
    """Write path atomically: a running shell or build keeps reading the old inode."""
    path = Path(path)
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    if mode is not None:
        tmp.chmod(mode)
    os.replace(tmp, path)


def exec_script(path, body):
    """An exec-mode build command: a small sh script."""
    replace_file(path, "#!/bin/sh\n" + body, 0o755)
    return str(path)


def set_test_conf(broot, profile, **conf):
    """Change what the test image's mkarchiso does for the next container of profile."""
    replace_file(Path(broot) / profile / "test.conf", "".join(f"{k}={v}\n" for k, v in conf.items()))


def results_for(r, ns, job_id):
    return [x for x in results(r, ns) if x["id"] == job_id]


def job_hash(r, ns, job_id):
    return {k.decode(): v.decode() for k, v in r.hgetall(nskey(ns, "job", job_id)).items()}


def queued_ids(r, ns):
    return [msgpack.unpackb(p)["id"] for p in r.lrange(nskey(ns, "queue"), 0, -1)]


def events_of(r, ns, job_id, typ):
    return [e for e in stream_events(r, ns, job_id) if e["type"] == typ]


def assert_one_result(r, ns, job_id):
    """Exactly one result in {ns}:results and one in {ns}:result:<id>; returns it."""
    got = results_for(r, ns, job_id)
    assert len(got) == 1, f"{job_id}: {len(got)} results in {{{ns}}}:results: {got}"
    own = [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "result", job_id), 0, -1)]
    assert len(own) <= 1, f"{job_id}: {len(own)} results in its own list"
    fin = events_of(r, ns, job_id, "finished")
    assert len(fin) == 1 and fin[0]["result"] == got[0], f"{job_id}: finished events {fin}"
    return got[0]


def assert_seq_strict(r, ns, job_id):
    seqs = [e["seq"] for e in stream_events(r, ns, job_id)]
    assert seqs == sorted(set(seqs)), f"{job_id}: seqs not strictly increasing: {seqs}"


def pid_gone(pid):
    """True when pid no longer exists (a zombie still counts as there)."""
    return not os.path.exists(f"/proc/{pid}")


def containers_gone(rt, label):
    return rt.containers(label) == []


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Where the workers a test starts make their cidfile directory
    (RUNTIME_DIRECTORY): a SIGKILLed worker cannot remove it, so it stays
    in tmp_path rather than in /tmp."""
    d = tmp_path / "run"
    d.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(d))
    return d


# ================================================================ 1. SIGKILL

@pytest.mark.containers
def test_sigkill_mid_build_is_rerun_once_and_container_removed(private_tmp, fleet, r, ns, broot, podman):
    """A worker SIGKILLed mid-build: another worker on the host reaps it
    within heartbeat_ttl + reaper_interval, re-runs the job (attempt 2),
    removes the dead worker's container, and exactly one result is kept."""
    # Attempt 1 hangs (ignores SIGTERM, never exits): its container can
    # only disappear because a worker removes it.  Attempt 2 is quick.
    podman = podman.with_env(RUNTIME_DIRECTORY=str(private_tmp))
    make_profile(broot, "p", mode="hang")
    a = fleet.start(podman)
    a_id = wid(a)
    jid = submit(r, ns, profile="p", output="out/1", timeout=600)
    a.wait_log(rf"job {jid}: started \(attempt 1, podman\)", 60)
    poll(lambda: podman.containers(f"debate.worker={a_id}"), 60, "the attempt-1 container")
    poll(lambda: any(e["type"] == "phase" and e["name"] == "packages" for e in stream_events(r, ns, jid)),
         60, "attempt 1 to reach its hanging stage")

    b = fleet.start(podman)
    b_id = wid(b)
    b.wait_log(r"redis cmd: connected", 30)
    set_test_conf(broot, "p", mode="ok", seconds=1)

    a.signal(signal.SIGKILL)
    t_kill = time.time()
    a.wait(10)

    # Re-run within ttl + reaper interval (+ the claim's round trips).
    poll(lambda: job_hash(r, ns, jid).get("attempt") == "2", HB_TTL + REAPER + 10, "attempt 2 to be claimed")
    t_rerun = time.time()
    assert job_hash(r, ns, jid)["worker"] == b_id
    assert t_rerun - t_kill <= HB_TTL + REAPER + 1.5 * SLOW, \
        f"re-run {t_rerun - t_kill:.2f}s after the kill (ttl {HB_TTL} + reaper {REAPER})"
    req = events_of(r, ns, jid, "requeued")
    assert len(req) == 1 and req[0]["reason"] == "worker_lost" and req[0]["worker"] == a_id, req
    assert req[0]["ts"] - t_kill <= HB_TTL + REAPER + 0.5 * SLOW

    res = wait_result(r, ns, jid, 60)
    assert res["status"] == "succeeded" and res["attempt"] == 2 and res["worker"] == b_id, res
    assert res["artifacts"] and res["artifacts"][0]["name"].endswith(".iso")
    assert assert_one_result(r, ns, jid) == res
    h = job_hash(r, ns, jid)
    assert h["state"] == "succeeded" and h["attempt"] == "2" and h["worker"] == b_id and h["lost"] == "1"

    # The dead worker's hanging container is gone, removed by the survivor.
    poll(lambda: containers_gone(podman, f"debate.worker={a_id}"), 30, f"the containers of {a_id} to go")
    b.wait_log(rf"removing container {ns}-build-{jid} of dead worker {a_id}|"
               rf"job {jid}: container name {ns}-build-{jid} is taken by an orphan", 10)
    assert containers_gone(podman, f"debate.ns={ns}")

    types = [(e["type"], e["attempt"]) for e in stream_events(r, ns, jid)]
    assert types.count(("started", 1)) == 1 and types.count(("started", 2)) == 1, types
    assert types[-1] == ("finished", 2)
    assert_seq_strict(r, ns, jid)
    assert r.llen(nskey(ns, "active", a_id)) == 0 and r.llen(nskey(ns, "active", b_id)) == 0
    assert r.zscore(nskey(ns, "workers"), a_id) is None
    assert dead(r, ns) == []
    assert b.alive()


@pytest.mark.containers
def test_reaper_removes_dead_workers_container_on_its_host(private_tmp, fleet, r, ns, broot, podman):
    """The orphan sweep alone: A is SIGKILLed with a hanging build while
    B, on the same host, is busy, so the job waits in the queue and no
    re-run can clash with A's container name.  B's reaper still removes
    A's container (label debate.worker=A) within ttl + reaper interval
    and a few seconds for the runtime."""
    podman = podman.with_env(RUNTIME_DIRECTORY=str(private_tmp))
    make_profile(broot, "hang", mode="hang")
    b = fleet.start(podman)
    b_id = wid(b)
    busy = submit(r, ns, profile="hang", output="o/busy", timeout=600)
    b.wait_log(rf"job {busy}: started", 60)
    a = fleet.start(podman)
    a_id = wid(a)
    jid = submit(r, ns, profile="hang", output="o/j", timeout=600)
    a.wait_log(rf"job {jid}: started", 60)
    poll(lambda: podman.containers(f"debate.worker={a_id}"), 60, "A's container")
    # Killed while the build is silent: a build that writes after its
    # worker died takes its runtime client down with it (broken pipe).
    poll(lambda: any(e["type"] == "phase" and e["name"] == "packages" for e in stream_events(r, ns, jid)),
         60, "A's build to reach its hanging stage")

    a.signal(signal.SIGKILL)
    t_kill = time.time()
    a.wait(10)
    b.wait_log(rf"reaper: worker {a_id} missed its heartbeat; 1 of its jobs", HB_TTL + REAPER + 10)
    b.wait_log(rf"removing container {ns}-build-{jid} of dead worker {a_id}", 10)
    poll(lambda: containers_gone(podman, f"debate.worker={a_id}"), 30, "A's container to go")
    took = time.time() - t_kill
    # rm --force gives a build that ignores SIGTERM podman's stop timeout (10 s).
    assert took <= HB_TTL + REAPER + 10 + 5 * SLOW, f"A's container went {took:.1f}s after the kill"
    assert queued_ids(r, ns) == [jid] and job_hash(r, ns, jid)["state"] == "queued"
    assert len(podman.containers(f"debate.worker={b_id}")) == 1     # B's own build untouched

    # Wind down: cancel both; the queued one never starts again.
    r.hset(nskey(ns, "cancel"), mapping={busy: time.time(), jid: time.time()})
    assert wait_result(r, ns, busy, 30)["status"] == "cancelled"
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "cancelled" and res["attempt"] == 2 and res["worker"] == b_id
    for j in (busy, jid):
        assert_one_result(r, ns, j)
    assert b.stop() == 0
    assert containers_gone(podman, f"debate.ns={ns}")


# ================================================================ 2. Redis outage

def redis_down(srv, how):
    """Stop redis-server the polite way (SIGTERM: it writes its AOF and
    exits) or crash it (SIGKILL: only what appendfsync already wrote stays)."""
    if how == "term":
        srv.stop()
    else:
        srv.proc.kill()
        srv.proc.wait()


@pytest.mark.parametrize("how", ["term", "kill"])
def test_redis_outage_every_result_arrives_once(how, tmp_path, ns, broot):
    """redis-server (AOF, appendfsync always) stopped, or killed, for
    several seconds while builds run and finish, then started again on the
    same port: the worker reconnects (and says so), delivers the results it
    buffered, and every job has exactly one result."""
    srv = RedisServer(tmp_path / "predis", persist=True).start()
    fleet = Fleet(tmp_path, srv.url, ns, broot)
    try:
        r = srv.client()
        cmd = exec_script(tmp_path / "build.sh",
                          'echo "[mkarchiso] INFO: Validating options..."\n'
                          'sleep "$(cat "$DEBATE_PROFILE/seconds")"\n'
                          'echo "$DEBATE_JOB_ID" > "$DEBATE_OUTPUT/out.iso"\necho built\n')
        for s in (2, 3, 4):
            make_profile(broot, f"s{s}")
            (broot / f"s{s}" / "seconds").write_text(f"{s}\n")
        w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2})
        w_id = wid(w)
        ids = [submit(r, ns, profile=f"s{2 + i % 3}", output=f"out/{i}") for i in range(7)]

        # Both slots busy, then Redis goes away for 6 s: the two running
        # builds (at most 4 s long) finish while it is away.
        first = ids[:2]
        for j in first:
            w.wait_log(rf"job {j}: started \(attempt 1, exec\)", 20)
        t_down = time.time()
        redis_down(srv, how)
        w.wait_log(r"redis cmd: .*retrying in", 10)
        for j in first:
            w.wait_log(rf"job {j}: succeeded", 10)
        time.sleep(max(0.0, t_down + 6 - time.time()))   # the outage itself: keep it down 6 s
        t_up = time.time()
        srv.start()
        r = srv.client()

        got = {j: wait_result(r, ns, j, 60) for j in ids}
        w.wait_log(r"redis cmd: connected again", 10)
        w.wait_log(r"redis fetch: connected again", 10)
        for j in ids:
            res = assert_one_result(r, ns, j)
            assert res == got[j]
            assert res["status"] == "succeeded" and res["attempt"] == 1 and res["worker"] == w_id, res
            assert res["artifacts"] and res["artifacts"][0]["name"] == "out.iso"
            assert job_hash(r, ns, j)["state"] == "succeeded"
            assert_seq_strict(r, ns, j)
        # The two builds that ran through the outage finished while Redis
        # was away: their results came from the worker's buffer.
        for j in first:
            assert t_down < got[j]["finished_at"] < t_up, (t_down, got[j]["finished_at"], t_up)
        assert len(results(r, ns)) == len(ids)
        assert r.llen(nskey(ns, "queue")) == 0 and r.llen(nskey(ns, "active", w_id)) == 0
        assert dead(r, ns) == []
        assert w.alive()
        assert w.stop() == 0
        assert len(results(r, ns)) == len(ids)
    finally:
        fleet.close()
        srv.stop()


def test_redis_outage_longer_than_ttl_reaps_no_live_worker(tmp_path, ns, broot):
    """Two workers, four builds, and Redis away for twice heartbeat_ttl:
    every heartbeat key expires during the outage, yet neither worker may
    reap the other once Redis is back (both were alive all along), so each
    build that finished during the outage keeps its result, attempt 1, and
    nothing runs twice."""
    srv = RedisServer(tmp_path / "predis", persist=True).start()
    fleet = Fleet(tmp_path, srv.url, ns, broot)
    try:
        r = srv.client()
        cmd = exec_script(tmp_path / "build.sh",
                          'echo "$$" >> "$DEBATE_OUTPUT/runs"\nsleep 3\necho built\n')
        make_profile(broot, "p")
        ws = [fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2})
              for _ in range(2)]
        w_ids = [wid(w) for w in ws]
        ids = [submit(r, ns, profile="p", output=f"out/{i}") for i in range(4)]
        poll(lambda: all(job_hash(r, ns, j).get("state") == "running" for j in ids), 20, "four running builds")
        owner = {j: job_hash(r, ns, j)["worker"] for j in ids}
        assert sorted(owner.values()) == sorted(w_ids * 2)

        t_down = time.time()
        srv.stop()
        for w in ws:
            for j in ids:
                if owner[j] == wid(w):
                    w.wait_log(rf"job {j}: succeeded", 10)
        time.sleep(max(0.0, t_down + 2 * HB_TTL - time.time()))   # the outage: twice the ttl
        t_up = time.time()
        srv.start()
        r = srv.client()

        got = {j: wait_result(r, ns, j, 30) for j in ids}
        for w in ws:
            w.wait_log(r"redis cmd: connected again", 10)
        # Give a reaper every chance to act wrongly: several reaper rounds.
        poll(lambda: all(float(r.zscore(nskey(ns, "workers"), x) or 0) > t_up + HB_TTL + REAPER for x in w_ids),
             HB_TTL + REAPER + 10, "both workers to beat for a ttl after the outage")
        for w in ws:
            for bad in ("reaper: worker", "result of attempt", "lost its lease"):
                assert bad not in w.log(), w.log()
        for j in ids:
            res = assert_one_result(r, ns, j)
            assert res == got[j] and res["status"] == "succeeded" and res["attempt"] == 1, res
            assert res["worker"] == owner[j]
            assert t_down < res["finished_at"] < t_up
            assert events_of(r, ns, j, "requeued") == []
            runs = (broot / "out" / str(ids.index(j)) / "runs").read_text().split()
            assert len(runs) == 1, f"{j}: the build ran {len(runs)} times"
        assert len(results(r, ns)) == 4 and dead(r, ns) == []
        for w in ws:
            assert w.alive() and w.stop() == 0
    finally:
        fleet.close()
        srv.stop()


class ReplyDropper:
    """A TCP proxy in front of redis-server that can lose Redis's answers:
    commands still reach Redis and run, but their replies are thrown away
    and then the connection is closed, so the worker sends them again on
    its next connection.  That is a network blip at its worst: the client
    cannot tell done from not done.

    cut(hold) does it to every connection at once; lose_claim_reply(hold)
    does it to the connection that next sends a claim (EVALSHA with six
    keys), right after the claim went through."""

    CLAIM = re.compile(rb"\$7\r\nEVALSHA\r\n\$40\r\n[0-9a-f]{40}\r\n\$1\r\n6\r\n")

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dropped = 0            # reply bytes thrown away
        self.claims_cut = 0         # claims whose reply was lost
        self.claim_hold = None      # armed: lose the next claim's reply
        self.pairs = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
                u = socket.create_connection(self.target)
            except OSError:
                continue
            pair = {"socks": (c, u), "drop": False}
            with self.lock:
                self.pairs.append(pair)
            threading.Thread(target=self._pump, args=(pair, c, u, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(pair, u, c, True), daemon=True).start()

    def _pump(self, pair, src, dst, replies):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if replies and pair["drop"]:
                    self.dropped += len(data)
                    continue
                if not replies and self.claim_hold is not None and self.CLAIM.search(data):
                    hold, self.claim_hold = self.claim_hold, None
                    pair["drop"] = True
                    self.claims_cut += 1
                    threading.Timer(hold, self._close, args=(pair,)).start()
                dst.sendall(data)
        except OSError:
            pass
        self._close(pair)

    def _close(self, pair):
        with self.lock:
            if pair in self.pairs:
                self.pairs.remove(pair)
        for x in pair["socks"]:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()

    def cut(self, hold):
        """Lose every reply for hold seconds, then close every connection."""
        with self.lock:
            pairs = list(self.pairs)
        for pair in pairs:
            pair["drop"] = True
        time.sleep(hold)
        for pair in pairs:
            self._close(pair)

    def lose_claim_reply(self, hold):
        self.claim_hold = hold

    def close(self):
        self.closed = True
        self.lsock.close()
        self.cut(0)


@pytest.mark.parametrize("what", ["blips", "claims"])
def test_lost_replies_are_replayed_without_doing_anything_twice(what, fleet, redis_srv, r, ns, broot, tmp_path):
    """Redis runs the worker's commands but its replies are lost (every
    connection at once, several times; or just after a claim was sent)
    while builds stream through two workers: the worker sends the
    unanswered commands again on its next connection.  Each replayed step
    (take a job, claim it, send an event, record the result) must happen
    once: every job has one result, attempt 1, one `started`, and strictly
    increasing seqs; no worker believes it lost a lease; nothing is left
    in the queue or dead."""
    proxy = ReplyDropper(redis_srv.port)
    try:
        cmd = exec_script(tmp_path / "build.sh",
                          'i=0; while [ $i -lt 24 ]; do echo "line $i"; sleep 0.05; i=$((i+1)); done\n')
        make_profile(broot, "p")
        fleet.redis_url = proxy.url
        ws = [fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2})
              for _ in range(2)]
        w_ids = [wid(w) for w in ws]
        ids = [submit(r, ns, profile="p", output=f"o/{i}") for i in range(40)]
        for k in (2, 10, 20, 30):
            poll(lambda: r.llen(nskey(ns, "results")) >= k, 60, f"{k} results")
            if what == "blips":
                proxy.cut(0.5)
            else:
                n = proxy.claims_cut
                proxy.lose_claim_reply(0.3)
                poll(lambda: proxy.claims_cut > n, 30, "a claim to be sent")
        for j in ids:
            wait_result(r, ns, j, 60)
        assert proxy.dropped > 0
        # A blip cuts every worker's connections; a lost claim reply cuts
        # the connection of whichever worker sent that claim.
        again = r"redis cmd: connected again"
        if what == "blips":
            for w in ws:
                w.wait_log(again, 10)
        else:
            assert proxy.claims_cut == 4
            poll(lambda: sum(len(re.findall(again, w.log())) for w in ws) >= proxy.claims_cut, 10,
                 "a reconnect after each lost claim reply")
        for w in ws:
            assert w.stop() == 0
            # No one took a job over: a replayed event of a job whose result
            # is already recorded is no lost lease (nor a refused result).
            for bad in ("lost its lease", "result of attempt", "reaper: worker"):
                assert bad not in w.log(), w.log()
        for j in ids:
            res = assert_one_result(r, ns, j)
            assert res["status"] == "succeeded" and res["attempt"] == 1, res
            evs = stream_events(r, ns, j)
            seqs = [e["seq"] for e in evs]
            assert seqs == list(range(1, len(seqs) + 1)), f"{j}: seqs {seqs}"
            assert [e["type"] for e in evs].count("started") == 1, f"{j}: {[e['type'] for e in evs]}"
            assert job_hash(r, ns, j)["attempt"] == "1"
        assert len(results(r, ns)) == len(ids)
        assert r.llen(nskey(ns, "queue")) == 0 and dead(r, ns) == []
        for x in w_ids:
            assert r.llen(nskey(ns, "active", x)) == 0
    finally:
        proxy.close()


# ================================================================ 3. SIGTERM

def test_sigterm_drains_running_builds_within_timeout(fleet, r, ns, broot, tmp_path):
    """SIGTERM with builds running and one queued: the running builds
    finish (drain), the queued job is not taken, the worker exits 0 and
    leaves nothing behind; a new worker runs the queued job."""
    make_profile(broot, "p")
    cmd = exec_script(tmp_path / "build.sh", 'echo start\nsleep 2\necho x > "$DEBATE_OUTPUT/a.iso"\necho done\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2, "drain_timeout": 30})
    w_id = wid(w)
    running = [submit(r, ns, profile="p", output=f"o/{i}") for i in range(2)]
    for j in running:
        w.wait_log(rf"job {j}: started \(attempt 1, exec\)", 20)
    waiting = submit(r, ns, profile="p", output="o/w")
    poll(lambda: waiting in queued_ids(r, ns), 5, "the third job to wait in the queue")

    t_term = time.time()
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    w.wait_log(r"SIGTERM: draining", 1)
    assert "drain timeout" not in w.log()
    for j in running:
        res = assert_one_result(r, ns, j)
        assert res["status"] == "succeeded" and res["attempt"] == 1 and res["worker"] == w_id, res
        assert res["finished_at"] > t_term      # it was running when the TERM came, and finished
        assert events_of(r, ns, j, "requeued") == []
    # The queued job was never taken: still queued, no event, no result.
    assert queued_ids(r, ns) == [waiting]
    assert job_hash(r, ns, waiting)["state"] == "queued"
    assert stream_events(r, ns, waiting) == [] and results_for(r, ns, waiting) == []
    assert r.exists(nskey(ns, "worker", w_id)) == 0 and r.llen(nskey(ns, "active", w_id)) == 0
    assert r.zscore(nskey(ns, "workers"), w_id) is None

    w2 = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    res = wait_result(r, ns, waiting, 20)
    assert res["status"] == "succeeded" and res["attempt"] == 1 and res["worker"] == wid(w2)
    assert w2.stop() == 0
    for j in running + [waiting]:
        assert_one_result(r, ns, j)
    assert len(results(r, ns)) == 3 and r.llen(nskey(ns, "queue")) == 0 and dead(r, ns) == []


@pytest.mark.parametrize("rt,how", [("exec", "timeout"), ("exec", "sigint"),
                                    pytest.param("podman", "timeout", marks=pytest.mark.containers)])
def test_sigterm_past_drain_timeout_puts_builds_back(rt, how, fleet, r, ns, broot, tmp_path, request):
    """SIGTERM with builds that outlast drain_timeout (and ignore SIGTERM),
    or SIGTERM then SIGINT (stop at once): the builds are stopped, their
    jobs go back on the queue (state queued, the payload in {ns}:queue, a
    `requeued` event with reason drained), the worker exits 0, no build is
    left running; a new worker finishes them and each job has one result."""
    podman = request.getfixturevalue("podman") if rt == "podman" else None
    make_profile(broot, "p", mode="hang")
    pidfile = tmp_path / "pids"
    hang = ('echo $$ >> "%s"\ntrap "" TERM INT\necho "[mkarchiso] INFO: Installing packages"\n'
            'while :; do sleep 0.1; done\n' % pidfile)
    if podman is not None:
        kw = dict(runtime=podman)
    else:
        kw = dict(sandbox={"runtime": "exec", "command": exec_script(tmp_path / "build.sh", hang),
                           "stop_grace": 1})
    w = fleet.start(worker={"concurrency": 2, "drain_timeout": 1 if how == "timeout" else 60}, **kw)
    w_id = wid(w)
    ids = [submit(r, ns, profile="p", output=f"o/{i}", timeout=600) for i in range(2)]
    for j in ids:
        w.wait_log(rf"job {j}: started \(attempt 1, {rt}\)", 60)
        poll(lambda: any(e["type"] == "phase" and e["name"] == "packages" for e in stream_events(r, ns, j)),
             60, f"{j} to reach its hanging stage")
    if podman is not None:
        assert len(podman.containers(f"debate.worker={w_id}")) == 2
        builds = None
    else:
        builds = [int(x) for x in pidfile.read_text().split()]
        assert len(builds) == 2 and not any(pid_gone(p) for p in builds)

    w.signal(signal.SIGTERM)
    if how == "sigint":
        w.wait_log(r"SIGTERM: draining", 10)
        w.signal(signal.SIGINT)
    assert w.wait(30) == 0
    if how == "timeout":
        w.wait_log(r"drain timeout \(1 s\): stopping running builds", 1)
    else:
        w.wait_log(r"signal 2: stopping running builds now", 1)
        assert "drain timeout" not in w.log()
    w.wait_log(r"put 2 jobs back on the queue", 1)
    if podman is not None:
        poll(lambda: containers_gone(podman, f"debate.ns={ns}"), 30, "the stopped containers to go")
    else:
        assert all(pid_gone(p) for p in builds), "a build outlived its worker"
    assert sorted(queued_ids(r, ns)) == sorted(ids)
    for j in ids:
        assert job_hash(r, ns, j)["state"] == "queued"
        evs = stream_events(r, ns, j)
        assert evs[-1]["type"] == "requeued" and evs[-1]["reason"] == "drained", evs[-1]
        assert events_of(r, ns, j, "finished") == [] and results_for(r, ns, j) == []
    assert results(r, ns) == [] and dead(r, ns) == []
    assert r.exists(nskey(ns, "worker", w_id)) == 0 and r.llen(nskey(ns, "active", w_id)) == 0

    # A new worker finishes them (the builds are quick now).
    if podman is not None:
        set_test_conf(broot, "p", mode="ok", seconds=0.5)
    else:
        exec_script(tmp_path / "build.sh", 'echo x > "$DEBATE_OUTPUT/a.iso"\necho done\n')
    w2 = fleet.start(worker={"concurrency": 2}, **kw)
    w2_id = wid(w2)
    for j in ids:
        res = wait_result(r, ns, j, 60)
        assert res["status"] == "succeeded" and res["attempt"] == 2 and res["worker"] == w2_id, res
    assert w2.stop() == 0
    for j in ids:
        assert_one_result(r, ns, j)
        assert_seq_strict(r, ns, j)
        h = job_hash(r, ns, j)
        assert h["state"] == "succeeded" and h["requeues"] == "1"
    assert len(results(r, ns)) == 2 and r.llen(nskey(ns, "queue")) == 0 and dead(r, ns) == []


# ================================================================ 4. cancel

@pytest.mark.containers
def test_cancel_queued_and_running_jobs(fleet, r, ns, broot, podman):
    """HSET {ns}:cancel <id> <ts> (PROTOCOL.md): a running build is stopped
    within seconds and recorded cancelled, its container gone; a job
    cancelled while queued is recorded cancelled without ever starting."""
    make_profile(broot, "hang", mode="hang")
    w = fleet.start(podman)          # one slot: the second job waits in the queue
    w_id = wid(w)
    running = submit(r, ns, profile="hang", output="o/run", timeout=600)
    w.wait_log(rf"job {running}: started \(attempt 1, podman\)", 60)
    poll(lambda: any(e["type"] == "phase" for e in stream_events(r, ns, running)), 60, "the build to run")
    assert len(podman.containers(f"debate.job={running}")) == 1
    queued = submit(r, ns, profile="hang", output="o/queued", timeout=600)

    # Cancel the queued one first: it must still be in the queue.
    r.hset(nskey(ns, "cancel"), queued, time.time())
    assert queued_ids(r, ns) == [queued] and job_hash(r, ns, queued)["state"] == "queued"

    t_cancel = time.time()
    r.hset(nskey(ns, "cancel"), running, t_cancel)
    res = wait_result(r, ns, running, 30)
    took = time.time() - t_cancel
    # Seen at the next stats tick (1 s), stop: TERM, 2 s grace, KILL.
    assert took <= STATS + 2 + 5 * SLOW, f"cancel took {took:.1f}s"
    assert res["status"] == "cancelled" and res["error"] == "cancelled" and res["attempt"] == 1, res
    assert res["worker"] == w_id
    w.wait_log(rf"job {running}: cancelled; stopping it", 1)
    poll(lambda: containers_gone(podman, f"debate.job={running}"), 30, "the cancelled container to go")
    assert job_hash(r, ns, running)["state"] == "cancelled"

    res_q = wait_result(r, ns, queued, 30)
    assert res_q["status"] == "cancelled" and res_q["exit_code"] == -1 and res_q["artifacts"] == [], res_q
    w.wait_log(rf"job {queued}: cancelled before it started", 5)
    assert [e["type"] for e in stream_events(r, ns, queued)] == ["finished"]
    assert f"job {queued}: started" not in w.log()
    assert podman.containers(f"debate.job={queued}") == []
    assert job_hash(r, ns, queued)["state"] == "cancelled"

    for j in (running, queued):
        assert_one_result(r, ns, j)
        assert not r.hexists(nskey(ns, "cancel"), j)      # removed with the result
    assert len(results(r, ns)) == 2
    assert r.llen(nskey(ns, "queue")) == 0 and r.llen(nskey(ns, "active", w_id)) == 0
    assert w.alive() and w.stop() == 0
    assert containers_gone(podman, f"debate.ns={ns}")


# ================================================================ 5. stale worker

def test_stale_worker_cannot_overwrite_result(fleet, r, ns, broot, tmp_path):
    """Worker A is SIGSTOPped past its lease with two builds; B reaps it,
    re-runs both and records their results.  After SIGCONT, A's result for
    the build that finished meanwhile is refused (its log says so), A stops
    the build that still runs, and {ns}:results keeps B's results only."""
    # The first attempt of a job runs for the profile's `tenths` of a
    # second, later ones 0.2 s: a marker in the output directory tells
    # them apart.
    cmd = exec_script(tmp_path / "build.sh",
                      'out="$DEBATE_OUTPUT"\n'
                      'if [ -e "$out/.tried" ]; then n=2; else n=$(cat "$DEBATE_PROFILE/tenths"); : > "$out/.tried"; fi\n'
                      'echo $$ >> "$out/.pids"\necho "start $$ $n"\n'
                      'i=0; while [ $i -lt $n ]; do sleep 0.1; i=$((i+1)); done\n'
                      'echo $$ > "$out/done.$$"\necho "built $$"\n')
    for name, tenths in (("short", 40), ("long", 600)):
        make_profile(broot, name)
        (broot / name / "tenths").write_text(f"{tenths}\n")
    sb = {"runtime": "exec", "command": cmd, "stop_grace": 1}
    a = fleet.start(sandbox=sb, worker={"concurrency": 2})
    a_id = wid(a)
    j_short = submit(r, ns, profile="short", output="o/short")   # ends while A is stopped
    j_long = submit(r, ns, profile="long", output="o/long")      # still runs when A resumes
    for j in (j_short, j_long):
        a.wait_log(rf"job {j}: started \(attempt 1, exec\)", 20)
    pid = {}
    for j, d in ((j_short, "short"), (j_long, "long")):
        pids = poll(lambda: (broot / "o" / d / ".pids").exists() and (broot / "o" / d / ".pids").read_text().split(),
                    10, f"{j}'s build to start")
        pid[j] = int(pids[0])
    b = fleet.start(sandbox=sb, worker={"concurrency": 2})
    b_id = wid(b)
    b.wait_log(r"redis cmd: connected", 20)

    a.signal(signal.SIGSTOP)
    try:
        for j in (j_short, j_long):
            res = wait_result(r, ns, j, HB_TTL + REAPER + 20)
            assert res["worker"] == b_id and res["attempt"] == 2 and res["status"] == "succeeded", res
        b.wait_log(rf"reaper: worker {a_id} missed its heartbeat; 2 of its jobs", 1)
        # A's first try of the short job has ended too (its parent, A, is stopped).
        poll(lambda: (broot / "o" / "short" / f"done.{pid[j_short]}").exists(), 10, "A's short build to end")
        assert not pid_gone(pid[j_long]) and not (broot / "o" / "long" / f"done.{pid[j_long]}").exists()
    finally:
        a.signal(signal.SIGCONT)

    a.wait_log(rf"job {j_short}: result of attempt 1 refused: another worker holds the job now", 20)
    a.wait_log(rf"job {j_long}: attempt 1 lost its lease .*; stopping it", 20)
    a.wait_log(rf"job {j_long}: error \(exit -1\) after [0-9.]+ s: lease lost", 20)
    assert pid_gone(pid[j_long]), "A's stale build still runs"
    assert not (broot / "o" / "long" / f"done.{pid[j_long]}").exists()

    for j in (j_short, j_long):
        res = assert_one_result(r, ns, j)
        assert res["worker"] == b_id and res["attempt"] == 2, res
        h = job_hash(r, ns, j)
        assert h["state"] == "succeeded" and h["worker"] == b_id and h["attempt"] == "2", h
        req = events_of(r, ns, j, "requeued")
        assert len(req) == 1 and req[0]["reason"] == "worker_lost" and req[0]["worker"] == a_id
        # Nothing of attempt 1 reached the stream after the take-over.
        t_req = req[0]["ts"]
        assert [e for e in stream_events(r, ns, j) if e["attempt"] == 1 and e["ts"] > t_req] == []
        assert_seq_strict(r, ns, j)
    assert len(results(r, ns)) == 2
    assert r.llen(nskey(ns, "active", a_id)) == 0 and r.llen(nskey(ns, "queue")) == 0
    assert a.alive() and b.alive()
    assert a.stop() == 0 and b.stop() == 0
    assert len(results(r, ns)) == 2


@pytest.mark.containers
def test_stale_podman_worker_leaves_the_new_owners_container_alone(fleet, r, ns, broot, podman):
    """The same with containers on one host, where both attempts' containers
    share the job's name: A is SIGSTOPped with a hanging build, B reaps it,
    removes A's container and runs attempt 2 in a container of the same
    name.  When A resumes, it must neither record a result nor stop or
    remove B's container: B's build succeeds."""
    make_profile(broot, "p", mode="hang")
    a = fleet.start(podman)
    a_id = wid(a)
    jid = submit(r, ns, profile="p", output="o", timeout=600)
    a.wait_log(rf"job {jid}: started \(attempt 1, podman\)", 60)
    poll(lambda: any(e["type"] == "phase" and e["name"] == "packages" for e in stream_events(r, ns, jid)),
         60, "attempt 1 to reach its hanging stage")
    b = fleet.start(podman)
    b_id = wid(b)
    b.wait_log(r"redis cmd: connected", 30)
    set_test_conf(broot, "p", mode="ok", seconds=8)    # attempt 2 still runs when A resumes

    a.signal(signal.SIGSTOP)
    try:
        poll(lambda: job_hash(r, ns, jid).get("attempt") == "2", HB_TTL + REAPER + 10, "B to take the job")
        poll(lambda: containers_gone(podman, f"debate.worker={a_id}"), 30, "A's container to be removed")
        poll(lambda: podman.containers(f"debate.worker={b_id}"), 30, "B's container")
    finally:
        a.signal(signal.SIGCONT)
    a.wait_log(rf"job {jid}: (result of attempt 1 refused|attempt 1 lost its lease)", 20)
    res = wait_result(r, ns, jid, 60)
    assert res["worker"] == b_id and res["attempt"] == 2 and res["status"] == "succeeded", res
    assert assert_one_result(r, ns, jid) == res
    assert job_hash(r, ns, jid)["state"] == "succeeded"
    assert a.alive() and a.stop() == 0 and b.stop() == 0
    assert containers_gone(podman, f"debate.ns={ns}")

# ================================================================ 6. soak

@pytest.mark.slow
def test_soak_kill_and_restart_one_worker_every_result_once(private_tmp, fleet, r, ns, broot, tmp_path):
    """300 short exec builds across four workers while one of them is
    SIGKILLed and restarted every 2 s (alternately under the same id, so
    its next life puts back what the last one held, and under a new id, so
    the reaper does): every job has exactly one result, nothing is left
    anywhere."""
    n_jobs = 300
    cmd = exec_script(tmp_path / "build.sh",
                      'sleep "0.$(cat "$DEBATE_PROFILE/tenths")"\n'
                      'echo "$DEBATE_JOB_ID" > "$DEBATE_OUTPUT/a.iso"\necho built\n')
    for t in range(2, 10):
        make_profile(broot, f"d{t}")
        (broot / f"d{t}" / "tenths").write_text(f"{t}\n")
    sections = dict(sandbox={"runtime": "exec", "command": cmd, "stop_grace": 1},
                    worker={"concurrency": 2}, queue={"max_attempts": 1000})
    ini = fleet.ini(**sections)
    stable = [fleet.start(ini=ini) for _ in range(3)]
    ids = [submit(r, ns, profile=f"d{2 + i % 8}", output=f"o/{i}") for i in range(n_jobs)]

    victim_ids = [f"victim-{ns}-0"]
    victim = fleet.start(ini=ini, args=["--id", victim_ids[-1]])
    kills = 0
    deadline = time.time() + 100 * SLOW
    next_kill = time.time() + 2
    while r.llen(nskey(ns, "results")) < n_jobs:
        assert time.time() < deadline, f"{r.llen(nskey(ns, 'results'))}/{n_jobs} results after {kills} kills"
        assert all(w.alive() for w in stable), "a stable worker died"
        if time.time() >= next_kill:
            victim.signal(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            if kills % 2 == 0:       # a new life under a new id: the reaper takes back its jobs
                victim_ids.append(f"victim-{ns}-{kills}")
            victim = fleet.start(ini=ini, args=["--id", victim_ids[-1]])
            next_kill = time.time() + 2
        time.sleep(0.05)
    assert kills >= 5, f"only {kills} kills: the soak ended too soon to mean much"

    # Stop the fleet: after this nothing can write a result any more.
    for w in stable + [victim]:
        assert w.stop() == 0
    allres = results(r, ns)
    by_id = {}
    for x in allres:
        by_id.setdefault(x["id"], []).append(x)
    dups = {k: v for k, v in by_id.items() if len(v) > 1}
    assert not dups, f"{len(dups)} jobs with more than one result: {list(dups.items())[:3]}"
    assert sorted(by_id) == sorted(ids) and len(allres) == n_jobs
    assert all(x["status"] == "succeeded" for x in allres), [x for x in allres if x["status"] != "succeeded"][:3]
    requeued = 0
    for j in ids:
        h = job_hash(r, ns, j)
        assert h["state"] == "succeeded" and h["attempt"] == str(by_id[j][0]["attempt"]), (j, h)
        evs = stream_events(r, ns, j)
        assert [e["type"] for e in evs].count("finished") == 1, (j, evs)
        requeued += sum(e["type"] == "requeued" for e in evs)
    assert requeued > 0, "no job was ever taken from a killed worker: the soak tested nothing"
    assert r.llen(nskey(ns, "queue")) == 0 and r.zcard(nskey(ns, "delayed")) == 0 and dead(r, ns) == []
    for w in stable:
        assert r.llen(nskey(ns, "active", wid(w))) == 0
    for v in victim_ids:
        assert r.llen(nskey(ns, "active", v)) == 0, v
