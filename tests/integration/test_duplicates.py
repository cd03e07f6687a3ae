"""Duplicate job ids, payloads the Lua scripts could not read, and oversized
payloads, with real workers (exec runtime) and
a real redis-server.

  1. A second payload with a running job's id is dead-lettered as
     duplicate_id by the claim and never touches the job; the same for a
     byte-identical copy, and for a refused (bad image) duplicate of a
     finished job.  A requeue of the job itself (reaper, retry) still runs.
     `enqueue submit` refuses a known id; `--rerun` runs a finished one again.
  8. A job whose meta holds bin and ext values, lost with its worker, is
     counted lost, requeued, and dead-lettered after max_attempts.
  6. A 200 MiB payload is refused with a small dead letter, the worker's
     peak RSS stays bounded, and it takes the next job.
"""
import hashlib
import os
import signal
import subprocess
import time

import msgpack
import pytest

from tests.harness import (ENQUEUE_BIN, SANITIZED, SLOW, Fleet, RedisServer, dead, make_profile, nskey, poll,
                           push_raw, results, stream_events, submit, wait_result, wid)


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def gate(tmp_path, name="build.sh"):
    """An exec build that marks it started, waits for tmp_path/go, writes an artifact."""
    cmd = tmp_path / name
    cmd.write_text("#!/bin/sh\n"
                   f": > '{tmp_path}/started'\n"
                   f"i=0; while [ ! -e '{tmp_path}/go' ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done\n"
                   'echo iso > "$DEBATE_OUTPUT/a.iso"\necho done\n')
    cmd.chmod(0o755)
    return str(cmd)


def active_lists(r, ns):
    return {key: r.lrange(key, 0, -1) for key in r.keys(nskey(ns, "active", "*"))}


def lease(r, ns, jid):
    h = r.hgetall(nskey(ns, "job", jid))
    return {f: h.get(f) for f in (b"state", b"worker", b"attempt", b"started_at", b"digest", b"enqueued_at")}


# ---------------------------------------------------------------- 1. duplicates

@pytest.mark.parametrize("copy", ["other_payload", "same_bytes"])
def test_second_payload_with_a_running_jobs_id_cannot_take_it_over(fleet, r, ns, broot, tmp_path, copy):
    make_profile(broot, "p")
    cmd = gate(tmp_path)
    w1 = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    w1_id = wid(w1)
    jid = submit(r, ns, profile="p", output="o/real", meta={"who": "real"})
    poll(lambda: (tmp_path / "started").exists(), 20, "the real build to start")
    w2 = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    w2_id = wid(w2)
    w2.wait_log(r"redis fetch: connected", 20)
    before = lease(r, ns, jid)
    assert before[b"state"] == b"running" and before[b"worker"] == w1_id.encode()
    real = r.lindex(nskey(ns, "active", w1_id), 0)
    dup = real if copy == "same_bytes" else pack(
        {"id": jid, "profile": "p", "output": "o/dup", "meta": {"who": "dup"}})
    push_raw(r, ns, dup)

    entries = poll(lambda: dead(r, ns), 20, "the duplicate's dead letter")
    assert len(entries) == 1
    e = entries[0]
    assert e["reason"] == "duplicate_id" and e["id"] == jid and e["payload"] == dup
    assert e["worker"] == w2_id and f"id {jid} is already running" in e["error"]
    assert lease(r, ns, jid) == before
    assert all(ev["attempt"] == 1 and ev.get("worker", w1_id) == w1_id
               for ev in stream_events(r, ns, jid))
    w2.wait_log(rf"refused a job {jid}: duplicate_id", 10)

    (tmp_path / "go").write_text("")
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "succeeded" and res["worker"] == w1_id and res["attempt"] == 1
    assert res["meta"] == {"who": "real"}
    assert [x["meta"] for x in results(r, ns)] == [{"who": "real"}]
    assert (broot / "o" / "real" / "a.iso").exists()
    assert not (broot / "o" / "dup").exists() or not any((broot / "o" / "dup").iterdir())
    types = [ev["type"] for ev in stream_events(r, ns, jid)]
    assert types.count("started") == 1 and types[-1] == "finished" and "dead" not in types
    poll(lambda: all(not v for v in active_lists(r, ns).values()), 10, "every active list to be empty")
    assert "lost its lease" not in w1.log()
    assert r.hget(nskey(ns, "job", jid), "state") == b"succeeded"
    assert w1.alive() and w2.alive()


def test_refused_duplicate_of_a_finished_job_leaves_it_succeeded(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    w = fleet.start(sandbox={"runtime": "exec", "command": "/bin/true"})
    jid = submit(r, ns, profile="p", output="o")
    assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    before = (r.hgetall(nskey(ns, "job", jid)), r.xrange(nskey(ns, "log", jid)), r.ttl(nskey(ns, "job", jid)) > 0)
    bad = pack({"id": jid, "profile": "p", "output": "o", "image": "evil:latest"})
    push_raw(r, ns, bad)
    (e,) = poll(lambda: dead(r, ns), 20, "the dead letter")
    assert e["reason"] == "image_not_allowed" and e["payload"] == bad
    after = (r.hgetall(nskey(ns, "job", jid)), r.xrange(nskey(ns, "log", jid)), r.ttl(nskey(ns, "job", jid)) > 0)
    assert after == before
    assert r.hget(nskey(ns, "job", jid), "state") == b"succeeded"
    assert [ev["type"] for ev in stream_events(r, ns, jid)][-1] == "finished"
    # and a valid second payload for the finished id: refused by the claim
    again = pack({"id": jid, "profile": "p", "output": "o2"})
    push_raw(r, ns, again)
    poll(lambda: len(dead(r, ns)) == 2, 20, "the second dead letter")
    assert dead(r, ns)[0]["reason"] == "duplicate_id" and "already succeeded" in dead(r, ns)[0]["error"]
    assert r.hgetall(nskey(ns, "job", jid)) == before[0] and len(results(r, ns)) == 1
    assert not (broot / "o2").exists() or not any((broot / "o2").iterdir())
    assert w.alive()


def test_a_failed_build_is_still_retried(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = tmp_path / "build.sh"
    cmd.write_text(f"#!/bin/sh\nif [ -e '{tmp_path}/once' ]; then exit 0; fi\n: > '{tmp_path}/once'\nexit 1\n")
    cmd.chmod(0o755)
    fleet.start(sandbox={"runtime": "exec", "command": str(cmd)},
                queue={"retry_backoff": 0.2, "retry_backoff_max": 1})
    jid = submit(r, ns, profile="p", output="o", retries=1)
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "succeeded" and res["attempt"] == 2
    assert dead(r, ns) == [] and len(results(r, ns)) == 1
    assert [ev["reason"] for ev in stream_events(r, ns, jid) if ev["type"] == "requeued"] == ["retry"]


def test_enqueue_submit_refuses_a_known_id_and_reruns_a_finished_one(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    ini = fleet.ini(sandbox={"runtime": "exec", "command": "/bin/true"})

    def enqueue(*args, check=0):
        cp = subprocess.run([ENQUEUE_BIN, "-c", ini, *args], capture_output=True, text=True,
                            timeout=60 * SLOW)
        assert cp.returncode == check, (args, cp.returncode, cp.stdout, cp.stderr)
        return cp

    enqueue("submit", "--profile", "p", "--output", "o", "--id", "job1", "--meta", "run=1")
    h = r.hgetall(nskey(ns, "job", "job1"))
    assert h[b"state"] == b"queued"
    assert h[b"digest"].decode() == hashlib.sha1(r.lindex(nskey(ns, "queue"), 0)).hexdigest()
    cp = enqueue("submit", "--profile", "p", "--output", "o", "--id", "job1", check=2)
    assert "job job1 is already queued" in cp.stderr
    cp = enqueue("submit", "--profile", "p", "--output", "o", "--id", "job1", "--rerun", check=2)
    assert "already queued" in cp.stderr and "--rerun" in cp.stderr
    assert r.llen(nskey(ns, "queue")) == 1

    fleet.start(ini=ini)
    first = wait_result(r, ns, "job1", 20)
    assert first["meta"] == {"run": "1"}
    cp = enqueue("submit", "--profile", "p", "--output", "o", "--id", "job1", check=2)
    assert "job job1 is already succeeded" in cp.stderr and "--rerun" in cp.stderr
    seqs = [ev["seq"] for ev in stream_events(r, ns, "job1")]

    enqueue("submit", "--profile", "p", "--output", "o", "--id", "job1", "--rerun", "--meta", "run=2",
            "--wait")
    evs = stream_events(r, ns, "job1")
    assert [ev["seq"] for ev in evs] == list(range(1, len(evs) + 1)) and len(evs) > len(seqs)
    assert evs[len(seqs)]["type"] == "started" and evs[len(seqs)]["attempt"] == 2
    own = [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "result", "job1"), 0, -1)]
    assert len(own) == 1 and own[0]["meta"] == {"run": "2"} and own[0]["attempt"] == 2
    assert dead(r, ns) == []


# ---------------------------------------------------------------- 8. bin and ext in the payload

@pytest.fixture
def orphan_builds(tmp_path):
    """Builds of SIGKILLed exec-mode workers are plain processes: killed at teardown."""
    yield tmp_path
    for f in tmp_path.glob("started.*"):
        try:
            os.killpg(int(f.name.split(".")[1]), signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_lost_job_with_bin_and_ext_meta_is_counted_and_dead_lettered(fleet, r, ns, broot, orphan_builds):
    tmp_path = orphan_builds
    make_profile(broot, "p")
    cmd = tmp_path / "hang.sh"
    cmd.write_text(f"#!/bin/sh\n: > '{tmp_path}/started.'$$\nwhile :; do sleep 0.1; done\n")
    cmd.chmod(0o755)
    queue = {"max_attempts": 2}
    a = fleet.start(sandbox={"runtime": "exec", "command": str(cmd)}, queue=queue)
    a_id = wid(a)
    meta = {"bin": b"\x00\xffraw", "ext": msgpack.ExtType(7, b"xyz"), "ts": msgpack.Timestamp(1700000000, 1)}
    jid = "binmeta-1"
    r.hset(nskey(ns, "job", jid), mapping={"state": "queued", "enqueued_at": time.time()})
    payload = pack({"id": jid, "profile": "p", "output": "o", "source_date_epoch": 1700000000,
                    "meta": meta})
    push_raw(r, ns, payload)
    a.wait_log(rf"job {jid}: started \(attempt 1", 20)
    b = fleet.start(sandbox={"runtime": "exec", "command": str(cmd)}, queue=queue)
    b_id = wid(b)
    b.wait_log(r"redis fetch: connected", 20)

    a.signal(signal.SIGKILL)
    a.wait(10)
    b.wait_log(rf"job {jid}: started \(attempt 2", 30)
    h = r.hgetall(nskey(ns, "job", jid))
    assert h[b"lost"] == b"1" and h[b"worker"] == b_id.encode()
    req = [ev for ev in stream_events(r, ns, jid) if ev["type"] == "requeued"]
    assert len(req) == 1 and req[0]["reason"] == "worker_lost" and req[0]["worker"] == a_id

    c = fleet.start(sandbox={"runtime": "exec", "command": str(cmd)}, queue=queue)
    c.wait_log(r"redis fetch: connected", 20)
    b.signal(signal.SIGKILL)
    b.wait(10)
    (e,) = poll(lambda: dead(r, ns), 30, "the worker_lost dead letter")
    assert e["reason"] == "worker_lost" and e["id"] == jid and e["payload"] == payload
    assert "lost with its worker 2 times" in e["error"]
    h = r.hgetall(nskey(ns, "job", jid))
    assert h[b"state"] == b"dead" and h[b"lost"] == b"2"
    assert [ev["type"] for ev in stream_events(r, ns, jid)][-1] == "dead"
    assert r.llen(nskey(ns, "queue")) == 0
    assert not any(active_lists(r, ns).values())
    assert c.alive()


# ---------------------------------------------------------------- 6. oversized payloads

def vm(pid, field):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


BIG = 200 << 20


def test_oversized_payload_is_refused_small_and_the_worker_goes_on(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    w = fleet.start(sandbox={"runtime": "exec", "command": "/bin/true"})
    w.wait_log(r"redis fetch: connected", 20)
    idle = vm(w.pid, "VmHWM")
    big = b"\x81\xa4meta\xc6" + BIG.to_bytes(4, "big") + b"\xa5" * BIG
    push_raw(r, ns, big)
    sha = hashlib.sha256(big).hexdigest()
    prefix = big[:256]
    del big
    (e,) = poll(lambda: dead(r, ns), 120, "the dead letter")
    peak = vm(w.pid, "VmHWM")
    assert e["reason"] == "payload_too_large" and "max_payload" in e["error"]
    assert "payload" not in e
    assert e["payload_len"] == BIG + 11 and e["payload_sha256"] == sha and e["payload_prefix"] == prefix
    assert len(r.lindex(nskey(ns, "dead"), 0)) < 2048
    assert not any(active_lists(r, ns).values())
    print(f"\nworker VmHWM idle {idle >> 20} MiB, after a {BIG >> 20} MiB payload {peak >> 20} MiB")
    # Measured: idle 2 MiB, peak 202 MiB (hiredis's read buffer holds the bulk once; no
    # reply copy, no worker copy); before this change 1.64 GiB (8x).  Under ASan, whose
    # realloc copies as the buffer grows and whose quarantine keeps what was freed:
    # 656 MiB (3.3x), so the bound there is looser.
    bound = (5 if SANITIZED else 1.5) * BIG
    assert peak - idle < bound, f"peak RSS {peak >> 20} MiB (idle {idle >> 20} MiB)"
    jid = submit(r, ns, profile="p", output="o")
    assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    assert w.alive()


def test_retry_dead_requeues_only_a_payload_that_owns_its_record(fleet, r, ns, broot):
    """retry-dead: a duplicate_id entry stays refused; so does a payload whose job
    belongs to another digest; the owner's own dead letter goes back."""
    ini = fleet.ini()

    def retry(*args, check):
        cp = subprocess.run([ENQUEUE_BIN, "-c", ini, "retry-dead", *args], capture_output=True,
                            text=True, timeout=60 * SLOW)
        assert cp.returncode == check, (args, cp.stdout, cp.stderr)
        return cp

    def entry(reason, payload, jid):
        return pack({"reason": reason, "error": "x", "payload": payload, "worker": "w", "ts": 1.0,
                     "id": jid})

    real = pack({"id": "r1", "profile": "p", "output": "o"})
    other = pack({"id": "r1", "profile": "p", "output": "o2"})
    r.hset(nskey(ns, "job", "r1"), mapping={"state": "succeeded", "digest": hashlib.sha1(real).hexdigest()})
    r.lpush(nskey(ns, "dead"), entry("duplicate_id", other, "r1"))
    cp = retry("0", check=1)
    assert "duplicate_id" in cp.stderr and "never requeued" in cp.stderr
    r.delete(nskey(ns, "dead"))
    r.lpush(nskey(ns, "dead"), entry("bad_path", other, "r1"))
    cp = retry("0", check=1)
    assert "job r1 belongs to another payload" in cp.stderr
    assert r.llen(nskey(ns, "queue")) == 0 and r.hget(nskey(ns, "job", "r1"), "state") == b"succeeded"
    assert r.llen(nskey(ns, "dead")) == 1

    # the record's own payload, dead: it goes back, bound to its digest
    bad = pack({"id": "r2", "profile": "gone", "output": "o"})
    r.hset(nskey(ns, "job", "r2"), mapping={"state": "dead", "digest": hashlib.sha1(bad).hexdigest()})
    r.lpush(nskey(ns, "dead"), entry("bad_path", bad, "r2"))
    retry("--id", "r2", check=0)
    assert r.lrange(nskey(ns, "queue"), 0, -1) == [bad]
    h = r.hgetall(nskey(ns, "job", "r2"))
    assert h[b"state"] == b"queued" and h[b"digest"].decode() == hashlib.sha1(bad).hexdigest()

    # an oversized payload's entry kept only its hashes
    r.lpush(nskey(ns, "dead"), pack({"reason": "payload_too_large", "error": "big", "payload_len": 5 << 20,
                                 "payload_sha256": "0" * 64, "payload_prefix": b"\x81", "worker": "w",
                                 "ts": 1.0}))
    cp = retry("0", check=1)
    assert "kept only the hashes of its 5242880-byte payload" in cp.stderr


def test_payload_just_under_redis_bulk_limit_is_still_dead_lettered(tmp_path, ns, broot):
    """Redis with proto-max-bulk-len 2mb: a payload just under it could not be
    sent back inside a dead entry; the refusal builds the entry in Redis instead."""
    srv = RedisServer(tmp_path / "redis", extra=["--proto-max-bulk-len", "2mb"]).start()
    fl = Fleet(tmp_path, srv.url, ns, broot)
    try:
        r = srv.client()
        make_profile(broot, "p")
        w = fl.start(sandbox={"runtime": "exec", "command": "/bin/true"})
        w.wait_log(r"redis fetch: connected", 20)
        n = (2 << 20) - 64
        big = b"\xc6" + (n - 5).to_bytes(4, "big") + b"z" * (n - 5)
        push_raw(r, ns, big)
        (e,) = poll(lambda: dead(r, ns), 30, "the dead letter")
        assert e["reason"] == "payload_too_large" and e["payload_len"] == n
        assert e["payload_sha256"] == hashlib.sha256(big).hexdigest()
        assert not any(active_lists(r, ns).values())
        assert "dead-lettering failed" not in w.log()
        jid = submit(r, ns, profile="p", output="o")
        assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    finally:
        fl.close()
        srv.stop()
