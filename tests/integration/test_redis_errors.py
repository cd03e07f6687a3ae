"""Error replies from a real redis-server: the
retry policy of worker/rconn.c.

Redis refuses a command before running it when a script of another client
runs past busy-reply-threshold (BUSY), when an RDB save failed and
stop-writes-on-bgsave-error holds (MISCONF), or when the script cache was
flushed (NOSCRIPT).  A result refused that way must be sent again until it
is recorded: exactly one result, nothing left in the active list, the job
hash final.  A fetch connection that keeps getting an error must back off
instead of reconnecting ten times a second, and its log lines are
rate-limited.

Each test owns its redis-server (CONFIG SET dir needs
enable-protected-configs), and the builds run in exec mode.
"""
import re
import threading
import time
import urllib.request

import pytest
import redis as redis_py
import msgpack

from tests.harness import (Fleet, RedisServer, dead, free_port, make_profile, nskey, poll, push_raw,
                           stream_events, submit, wait_result, wid)


def build_script(tmp_path, body):
    p = tmp_path / "build.sh"
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)


def assert_recorded_once(r, ns, jid, wid_, status="succeeded"):
    """One result (in both lists), one finished event, the hash final, nothing held."""
    res = [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "results"), 0, -1)]
    res = [x for x in res if x["id"] == jid]
    assert len(res) == 1, res
    assert res[0]["status"] == status, res[0]
    assert r.llen(nskey(ns, "result", jid)) <= 1     # wait_result popped it
    fin = [e for e in stream_events(r, ns, jid) if e["type"] == "finished"]
    assert len(fin) == 1 and fin[0]["result"] == res[0]
    seqs = [e["seq"] for e in stream_events(r, ns, jid)]
    assert seqs == sorted(set(seqs)), seqs
    assert r.hget(nskey(ns, "job", jid), "state").decode() == status
    assert r.llen(nskey(ns, "active", wid_)) == 0
    assert r.llen(nskey(ns, "queue")) == 0 and dead(r, ns) == []
    # Recorded by the run that did it, not by a second run after a requeue.
    assert res[0]["attempt"] == 1 and r.hget(nskey(ns, "job", jid), "attempt") == b"1", res[0]
    return res[0]


@pytest.fixture
def esrv(tmp_path):
    """A redis-server whose dir and save points the test may change."""
    srv = RedisServer(tmp_path / "eredis", extra=["--enable-protected-configs", "yes"]).start()
    yield srv
    srv.stop()


@pytest.fixture
def efleet(tmp_path, esrv, ns, broot):
    f = Fleet(tmp_path, esrv.url, ns, broot)
    yield f
    f.close()


class Misconf:
    """Make Redis refuse writes with MISCONF: a save point, a BGSAVE into a
    directory that is gone (we run as root, so permissions would not stop
    it), stop-writes-on-bgsave-error yes.  clear() saves into a real
    directory again, which lifts it."""

    def __init__(self, r, tmp_path):
        self.r = r
        self.dir = str(tmp_path / "eredis")
        self.gone = tmp_path / "gone"

    def start(self):
        self.gone.mkdir()
        self.r.config_set("save", "3600 1")
        self.r.config_set("stop-writes-on-bgsave-error", "yes")
        self.r.config_set("dir", str(self.gone))
        self.gone.rmdir()
        self.r.set("misconf-test", "1")       # a change, so the save has something to do
        self.r.bgsave()
        poll(lambda: self.r.info("persistence")["rdb_last_bgsave_status"] == "err"
             and not self.r.info("persistence")["rdb_bgsave_in_progress"], 10, "the BGSAVE to fail")
        with pytest.raises(redis_py.exceptions.ResponseError, match="MISCONF"):
            self.r.set("misconf-test", "2")

    def clear(self):
        self.r.config_set("dir", self.dir)
        self.r.bgsave()
        poll(lambda: self.r.info("persistence")["rdb_last_bgsave_status"] == "ok", 10, "a BGSAVE to succeed")
        self.r.config_set("save", "")
        self.r.set("misconf-test", "3")


def test_busy_during_finish_is_retried_until_recorded(efleet, esrv, ns, broot, tmp_path):
    """Another client's script runs past busy-reply-threshold while the
    build finishes: the finish (and the events) are answered BUSY, sent
    again with backoff, and recorded once the script is killed."""
    r = esrv.client()
    r.config_set("busy-reply-threshold", "50")
    make_profile(broot, "p")
    cmd = build_script(tmp_path, 'echo one\nsleep 1\necho two\necho iso > "$DEBATE_OUTPUT/a.iso"\n')
    port = free_port()
    w = efleet.start(sandbox={"runtime": "exec", "command": cmd},
                     worker={"metrics_listen": f"127.0.0.1:{port}"})
    w_id = wid(w)
    jid = submit(r, ns, profile="p", output="o/1")
    w.wait_log(rf"job {jid}: started", 20)

    # A busy loop (no TIME: it may be cached in a script), killed below.
    busy_err = []

    def spin():
        c = esrv.client()
        try:
            c.eval("local i = 0 while i < 1e12 do i = i + 1 end return i", 0)
        except redis_py.exceptions.ResponseError as e:
            busy_err.append(str(e))

    t = threading.Thread(target=spin, daemon=True)
    t.start()
    killer = esrv.client()
    # The build ends while Redis is busy; its result is refused, then held.
    w.wait_log(rf"job {jid}: succeeded", 20)
    time.sleep(1.5)         # several retries, each answered BUSY
    killer.script_kill()
    t.join(20)
    assert busy_err and "killed" in busy_err[0].lower(), busy_err

    wait_result(r, ns, jid, 20)
    res = assert_recorded_once(r, ns, jid, w_id)
    w.wait_log(r"redis cmd: BUSY .*; sending the refused commands again", 1)
    assert res["artifacts"] and res["artifacts"][0]["name"] == "a.iso"
    assert "recording the result failed" not in w.log()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        m = dict(line.rsplit(" ", 1) for line in resp.read().decode().splitlines()
                 if line and not line.startswith("#"))
    assert 1 <= float(m["debate_redis_retried_total"]) <= 60, m["debate_redis_retried_total"]
    # Backoff, not a spin: 0.05 s doubling, so a few retries in the 1.5 s.
    assert len(re.findall(r"redis cmd: BUSY", w.log())) <= 2, "the BUSY line is rate-limited"
    assert w.alive()
    # And the worker goes on: a second job runs normally.
    j2 = submit(r, ns, profile="p", output="o/2")
    wait_result(r, ns, j2, 20)
    assert_recorded_once(r, ns, j2, w_id)


def test_misconf_during_finish_is_retried_until_recorded(efleet, esrv, ns, broot, tmp_path):
    """A failed BGSAVE stops writes (MISCONF) while the build runs: the
    events and the finish are refused and kept; once a save succeeds again
    the result is recorded, once."""
    r = esrv.client()
    make_profile(broot, "p")
    cmd = build_script(tmp_path, 'echo one\nsleep 1.5\necho iso > "$DEBATE_OUTPUT/a.iso"\n')
    w = efleet.start(sandbox={"runtime": "exec", "command": cmd})
    w_id = wid(w)
    jid = submit(r, ns, profile="p", output="o/1")
    w.wait_log(rf"job {jid}: started", 20)
    m = Misconf(r, tmp_path)
    try:
        m.start()
        w.wait_log(rf"job {jid}: succeeded", 20)
        time.sleep(1)
        assert r.llen(nskey(ns, "results")) == 0
        assert r.hget(nskey(ns, "job", jid), "state") == b"running"
    finally:
        m.clear()
    wait_result(r, ns, jid, 20)
    assert_recorded_once(r, ns, jid, w_id)
    w.wait_log(r"redis cmd: MISCONF .*; sending the refused commands again", 1)
    assert "recording the result failed" not in w.log()
    assert w.alive()


def test_script_flush_mid_run_reloads_and_records_once(efleet, esrv, ns, broot, tmp_path):
    """SCRIPT FLUSH while builds run (events flowing) and finish: every
    refused EVALSHA (NOSCRIPT) is sent again after the scripts are loaded
    again; each job has one result and strictly increasing seqs."""
    r = esrv.client()
    make_profile(broot, "p")
    cmd = build_script(tmp_path, 'i=0; while [ $i -lt 20 ]; do echo "line $i"; sleep 0.05; i=$((i+1)); done\n')
    w = efleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2,
                                                                            "log_batch_lines": 2})
    w_id = wid(w)
    ids = [submit(r, ns, profile="p", output=f"o/{i}") for i in range(6)]
    for _ in range(6):
        r.script_flush()
        time.sleep(0.4)
    for j in ids:
        wait_result(r, ns, j, 30)
    for j in ids:
        assert_recorded_once(r, ns, j, w_id)
    assert "NOSCRIPT" in w.log()
    for bad in ("recording the result failed", "lost its lease", "claim failed", "event refused"):
        assert bad not in w.log(), w.log()


def test_fetch_error_backs_off_and_recovers(efleet, esrv, ns, broot, tmp_path):
    """Redis in MISCONF for about 5 s while the worker starts: every BLMOVE
    is answered MISCONF and drops the fetch connection, which must back off
    (no reset on a handshake that succeeds) and log the error rate-limited;
    once a save succeeds again the worker takes and runs a job."""
    r = esrv.client()
    make_profile(broot, "p")
    cmd = build_script(tmp_path, 'echo iso > "$DEBATE_OUTPUT/a.iso"\n')
    m = Misconf(r, tmp_path)
    m.start()
    try:
        w = efleet.start(sandbox={"runtime": "exec", "command": cmd})
        w_id = wid(w)
        w.wait_log(r"fetch: MISCONF", 20)
        t0 = time.time()
        time.sleep(5)
        log = w.log()
        n = len(re.findall(r"redis fetch: connected", log))
        lines = len(re.findall(r"fetch: MISCONF", log))
        print(f"{n} fetch connections and {lines} MISCONF lines in {time.time() - t0:.1f}s")
        assert n <= 7, f"{n} fetch (re)connections in ~5 s:\n{log}"
        assert lines <= 4, f"{lines} fetch MISCONF log lines in ~5 s:\n{log}"
        assert w.alive()
    finally:
        m.clear()
    jid = submit(r, ns, profile="p", output="o/1")
    wait_result(r, ns, jid, 30)
    assert_recorded_once(r, ns, jid, w_id)
    assert w.alive()


def test_lasting_claim_error_dead_letters_the_job(efleet, esrv, ns, broot, tmp_path):
    """A claim Redis answers with an error that lasts (anyone who can
    write the queue can make a job's hash key a string: WRONGTYPE) is not
    put back on the queue, where it would be taken and fail again at
    once: it is dead-lettered as claim_failed, and the worker goes on."""
    r = esrv.client()
    make_profile(broot, "p")
    cmd = build_script(tmp_path, 'echo iso > "$DEBATE_OUTPUT/a.iso"\n')
    w = efleet.start(sandbox={"runtime": "exec", "command": cmd})
    w_id = wid(w)
    bad = "wrongtype-job"
    r.set(nskey(ns, "job", bad), "not a hash")
    push_raw(r, ns, msgpack.packb({"id": bad, "profile": "p", "output": "o/bad",
                                   "source_date_epoch": 1700000000}))
    poll(lambda: dead(r, ns), 20, "the dead letter")
    time.sleep(1)
    d = dead(r, ns)
    assert len(d) == 1 and d[0]["reason"] == "claim_failed" and d[0]["id"] == bad, d
    assert "WRONGTYPE" in d[0]["error"], d[0]
    assert r.llen(nskey(ns, "queue")) == 0 and r.llen(nskey(ns, "active", w_id)) == 0
    assert len(re.findall(rf"job {bad}: claiming -> ", w.log())) == 1, "taken more than once"
    jid = submit(r, ns, profile="p", output="o/1")
    wait_result(r, ns, jid, 20)
    assert w.alive()


def test_events_refused_busy_are_not_overtaken(efleet, esrv, ns, broot, tmp_path):
    """Short scripts of another client keep Redis busy on and off while a
    build prints 1,500 numbered lines: an event answered BUSY is sent
    again, and the events behind it (already sent, answered once the
    script ended) must not have overtaken it, or it would be refused as
    a replay and its lines lost.  Every line reaches the stream, once, in
    order."""
    r = esrv.client()
    r.config_set("busy-reply-threshold", "10")
    make_profile(broot, "p")
    n = 1500
    cmd = build_script(tmp_path, f'/usr/bin/python3 -c \'import sys, time\nfor i in range({n}):\n'
                                 f'    print("line", i, flush=True); time.sleep(0.002)\'\n'
                                 'echo iso > "$DEBATE_OUTPUT/a.iso"\n')
    w = efleet.start(sandbox={"runtime": "exec", "command": cmd},
                     worker={"log_batch_interval": 0.002})
    w_id = wid(w)
    jid = submit(r, ns, profile="p", output="o/1")
    w.wait_log(rf"job {jid}: started", 20)
    stop = threading.Event()
    spins = []

    def spin():
        # Busy for about 50 ms, then free for 3, until the result is in.
        c = esrv.client()
        while not stop.is_set():
            try:
                c.eval("local i = 0 while i < 2e6 do i = i + 1 end return i", 0)
                spins.append(1)
            except redis_py.exceptions.ResponseError:
                pass
            time.sleep(0.003)

    t = threading.Thread(target=spin, daemon=True)
    t.start()

    def recorded():
        try:
            return r.llen(nskey(ns, "result", jid)) > 0
        except redis_py.exceptions.ResponseError:      # BUSY: our own client too
            return False
    try:
        poll(recorded, 120, "the result")
    finally:
        stop.set()
        t.join(20)
    wait_result(r, ns, jid, 20)
    assert len(spins) > 20, "the busy scripts did not run"
    res = assert_recorded_once(r, ns, jid, w_id)
    assert res["dropped_lines"] == 0, res
    lines = [ln for e in stream_events(r, ns, jid) if e["type"] == "log" for ln in e["lines"]]
    assert lines == [f"line {i}" for i in range(n)], (len(lines), [x for x in range(n) if f"line {x}" not in lines][:10])
    assert w.log().count("BUSY") >= 1, "no event was answered BUSY: the test did not test anything"
