"""The worker's Lua scripts, EVALed directly against a real redis-server.

Each script is read the way the build reads it (Makefile, scripts/lua2c.awk):
worker/lua/prelude.lua followed by the script's own file, byte for byte.
These are the edge cases a whole worker reaches only by luck: a claim
replayed after its answer was lost, a finish from a lease that moved on,
the reaper after an outage.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_lua.py
"""
import time
import uuid

import msgpack
import redis
import pytest

from tests.harness import REPO, nskey


LUA = REPO / "worker" / "lua"


def script(name: str) -> str:
    """A worker script as the build makes it: prelude.lua + NAME.lua."""
    prelude = (LUA / "prelude.lua").read_text()
    body = (LUA / f"{name}.lua").read_text()
    assert prelude.endswith("\n") and body.endswith("\n")
    return prelude + body


def shared_script(path: str) -> str:
    """A script that stands alone (enqueue's, the producers')."""
    text = (REPO / path).read_text()
    assert text.endswith("\n")
    return text


@pytest.fixture
def r(redis_server):
    return redis_server.client()


@pytest.fixture
def ns():
    return "l" + uuid.uuid4().hex[:10]


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def job_payload(jid: str, **extra) -> bytes:
    return pack({"id": jid, "profile": "p", "output": "o", **extra})


def started_event(jid: str, worker: str):
    """A started event with the uint32 placeholders the claim patches."""
    ph = b"\xce\x00\x00\x00\x00"
    head = msgpack.packb({"id": jid})[1:]           # without the map header
    ev = bytearray(b"\x86" + head + pack("seq"))
    seq_off = len(ev)
    ev += ph + pack("ts") + pack(time.time()) + pack("type") + pack("started") + pack("attempt")
    att_off = len(ev)
    ev += ph + pack("worker") + pack(worker)
    return bytes(ev), seq_off, att_off


def claim(r, ns, worker, payload, jid, now, dead_maxlen="0"):
    ev, so, ao = started_event(jid, worker)
    return r.eval(script("claim"), 6, nskey(ns, "job", jid), nskey(ns, "active", worker), nskey(ns, "cancel"),
                  nskey(ns, "log", jid), nskey(ns, "progress", jid), nskey(ns, "events"),
                  worker, payload, now, jid, ev, so, ao, "100", dead_maxlen)


def finish(r, ns, worker, attempt, payload, jid, status="succeeded", seq=2, retry_due="0"):
    res = pack({"id": jid, "status": status, "attempt": attempt, "worker": worker})
    fin = pack({"id": jid, "seq": seq, "type": "finished", "attempt": attempt, "result": {}})
    return r.eval(script("finish"), 9, nskey(ns, "job", jid), nskey(ns, "active", worker), nskey(ns, "results"),
                  nskey(ns, "result", jid), nskey(ns, "progress", jid), nskey(ns, "events"), nskey(ns, "log", jid),
                  nskey(ns, "cancel"), nskey(ns, "delayed"),
                  worker, attempt, payload, res, fin, seq, status, "0", f"{time.time():.6f}", "",
                  "3600", "100", jid, retry_due, b"")


def beat(r, ns, worker, now, ttl=3.0, max_attempts=3, host="h"):
    return r.eval(script("beat"), 7, nskey(ns, "worker", worker), nskey(ns, "workers"), nskey(ns, "reaper"),
                  nskey(ns, "delayed"), nskey(ns, "queue"), nskey(ns, "dead"), nskey(ns, "orphans", host),
                  worker, f"{now:.3f}", str(int(ttl * 1000)), "1", "{" + ns + "}:", max_attempts,
                  host, "1", "1.0.0", f"{now:.3f}", "1", "0", "", "100", f"{ttl:.3f}", "0",
                  "full", "1000000000", "0")   # mode, disk_free, disk_low


def events(r, ns, jid):
    return [msgpack.unpackb(f[b"event"]) for _, f in r.xrange(nskey(ns, "log", jid))]


def queue_job(r, ns, jid, payload, **fields):
    """A job the way the backend queues it (hash then LPUSH), already BLMOVEd to worker."""
    r.hset(nskey(ns, "job", jid), mapping={"state": "queued", "enqueued_at": time.time(), **fields})


# ---------------------------------------------------------------- claim

def test_every_script_text_is_prelude_plus_file():
    for name in ("claim", "emit", "finish", "refuse", "beat", "release"):
        text = script(name)
        assert text.startswith("-- prelude.lua") and f"-- {name}.lua" in text


def test_replayed_claim_answers_as_the_first(r, ns):
    """The same claim sent twice (its answer lost): one attempt, one started."""
    p = job_payload("j1")
    queue_job(r, ns, "j1", p)
    r.lpush(nskey(ns, "active", "w1"), p)
    now = f"{time.time():.6f}"
    first = claim(r, ns, "w1", p, "j1", now)
    again = claim(r, ns, "w1", p, "j1", now)
    assert first == [b"ok", 1, 1] and again == first
    h = r.hgetall(nskey(ns, "job", "j1"))
    assert h[b"attempt"] == b"1" and h[b"state"] == b"running" and h[b"worker"] == b"w1"
    assert [e["type"] for e in events(r, ns, "j1")] == ["started"]
    # a new claim (another now) is a new attempt, continuing the seq
    r.hset(nskey(ns, "job", "j1"), "state", "queued")
    assert claim(r, ns, "w1", p, "j1", f"{time.time() + 1:.6f}") == [b"ok", 2, 2]


def test_claim_of_a_payload_no_longer_ours_is_gone(r, ns):
    p = job_payload("j2")
    queue_job(r, ns, "j2", p)
    assert claim(r, ns, "w1", p, "j2", f"{time.time():.6f}") == [b"gone", 0, 0]
    assert r.hget(nskey(ns, "job", "j2"), "state") == b"queued"
    assert events(r, ns, "j2") == []


# ---------------------------------------------------------------- finish

def test_stale_finish_is_refused(r, ns):
    """A worker whose lease moved on (the reaper gave the job to w2) records nothing."""
    p = job_payload("j3")
    queue_job(r, ns, "j3", p)
    r.lpush(nskey(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "j3", f"{time.time():.6f}")[0] == b"ok"
    # w1 is reaped; w2 takes the job: attempt 2
    r.lrem(nskey(ns, "active", "w1"), 1, p)
    r.hset(nskey(ns, "job", "j3"), "state", "queued")
    r.lpush(nskey(ns, "active", "w2"), p)
    assert claim(r, ns, "w2", p, "j3", f"{time.time():.6f}")[:2] == [b"ok", 2]
    r.lpush(nskey(ns, "active", "w1"), p)          # even with the payload back in w1's list
    assert finish(r, ns, "w1", 1, p, "j3") == b"stale"
    assert r.llen(nskey(ns, "results")) == 0 and not r.exists(nskey(ns, "result", "j3"))
    assert finish(r, ns, "w2", 2, p, "j3", seq=3) == b"ok"
    assert finish(r, ns, "w2", 2, p, "j3", seq=3) == b"dup"      # replayed: recognised
    assert r.llen(nskey(ns, "results")) == 1
    assert r.hget(nskey(ns, "job", "j3"), "state") == b"succeeded"
    assert r.lrange(nskey(ns, "active", "w2"), 0, -1) == []


# ---------------------------------------------------------------- the reaper

def test_reaper_respects_the_outage_gap(r, ns):
    """After a gap in beats longer than the ttl (Redis was away), nobody is
    reaped until the fleet had a ttl to beat again; then the dead one is."""
    p = job_payload("j4")
    t0 = time.time()
    queue_job(r, ns, "j4", p)
    r.lpush(nskey(ns, "active", "dead1"), p)
    r.zadd(nskey(ns, "workers"), {"dead1": t0 - 100})
    r.hset(nskey(ns, "job", "j4"), mapping={"state": "running", "worker": "dead1", "attempt": 1})
    r.hset(nskey(ns, "clock"), "beat", f"{t0 - 60:.3f}")     # the last beat: a minute ago

    got = beat(r, ns, "w1", t0)
    assert got[0] == [] and r.llen(nskey(ns, "active", "dead1")) == 1
    assert float(r.hget(nskey(ns, "clock"), "back")) == pytest.approx(t0, abs=0.01)
    r.delete(nskey(ns, "reaper"))
    got = beat(r, ns, "w1", t0 + 2.9)                     # still within the ttl after coming back
    assert got[0] == [] and r.llen(nskey(ns, "active", "dead1")) == 1
    r.delete(nskey(ns, "reaper"))
    got = beat(r, ns, "w1", t0 + 3.5)
    assert got[0] == [b"dead1", b"1"]
    assert r.lrange(nskey(ns, "queue"), 0, -1) == [p]
    h = r.hgetall(nskey(ns, "job", "j4"))
    assert h[b"state"] == b"queued" and h[b"lost"] == b"1"
    ev = events(r, ns, "j4")
    assert [e["type"] for e in ev] == ["requeued"] and ev[0]["reason"] == "worker_lost"


# ---------------------------------------------------------------- duplicate ids

def sha1(b: bytes) -> str:
    import hashlib
    return hashlib.sha1(b).hexdigest()


def snapshot(r, ns, jid):
    """Everything of a job a duplicate must not touch."""
    return (r.hgetall(nskey(ns, "job", jid)), r.xrange(nskey(ns, "log", jid)),
            r.lrange(nskey(ns, "result", jid), 0, -1), r.ttl(nskey(ns, "job", jid)))


def running_job(r, ns, jid, worker="w1", **extra):
    p = job_payload(jid, **extra)
    queue_job(r, ns, jid, p)
    r.lpush(nskey(ns, "active", worker), p)
    assert claim(r, ns, worker, p, jid, f"{time.time():.6f}")[0] == b"ok"
    return p


def test_claim_binds_the_digest_of_the_first_payload(r, ns):
    p = running_job(r, ns, "d0")
    assert r.hget(nskey(ns, "job", "d0"), "digest").decode() == sha1(p)
    # a plain LPUSH with no job hash at all: the claim makes the record
    q = job_payload("d0b")
    r.lpush(nskey(ns, "active", "w1"), q)
    assert claim(r, ns, "w1", q, "d0b", f"{time.time():.6f}")[:2] == [b"ok", 1]
    h = r.hgetall(nskey(ns, "job", "d0b"))
    assert h[b"state"] == b"running" and h[b"digest"].decode() == sha1(q)


@pytest.mark.parametrize("same_bytes", [False, True])
def test_duplicate_of_a_running_job_is_dead_lettered_and_touches_nothing(r, ns, same_bytes):
    p = running_job(r, ns, "d1", meta={"real": True})
    before = snapshot(r, ns, "d1")
    dup = p if same_bytes else job_payload("d1", output="elsewhere", meta={"real": False})
    r.lpush(nskey(ns, "active", "w2"), dup)
    got = claim(r, ns, "w2", dup, "d1", f"{time.time():.6f}", dead_maxlen="5")
    assert got[:3] == [b"duplicate", 0, 0]
    assert b"already running" in got[3]
    assert snapshot(r, ns, "d1") == before
    assert r.lrange(nskey(ns, "active", "w2"), 0, -1) == []
    assert r.lrange(nskey(ns, "active", "w1"), 0, -1) == [p]
    (entry,) = [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "dead"), 0, -1)]
    assert entry["reason"] == "duplicate_id" and entry["payload"] == dup and entry["id"] == "d1"
    assert entry["worker"] == "w2" and "id d1 is already running" in entry["error"]
    assert ("second copy" in entry["error"]) == same_bytes
    assert ("under another payload" in entry["error"]) != same_bytes
    # the real job still finishes, once
    assert finish(r, ns, "w1", 1, p, "d1") == b"ok"
    assert r.hget(nskey(ns, "job", "d1"), "state") == b"succeeded"


@pytest.mark.parametrize("case", ["finished", "only_result", "queued_other", "legacy_final"])
def test_duplicate_of_a_known_id_is_refused(r, ns, case):
    jid = "d2" + case
    if case in ("finished", "only_result"):
        p = running_job(r, ns, jid)
        assert finish(r, ns, "w1", 1, p, jid) == b"ok"
        if case == "only_result":
            r.delete(nskey(ns, "job", jid))
    elif case == "queued_other":
        p = job_payload(jid)
        r.hset(nskey(ns, "job", jid), mapping={"state": "queued", "digest": sha1(p)})
    else:
        r.hset(nskey(ns, "job", jid), mapping={"state": "failed"})      # an old producer's record
    before = snapshot(r, ns, jid)
    dup = job_payload(jid, profile="other")
    r.lpush(nskey(ns, "active", "w2"), dup)
    got = claim(r, ns, "w2", dup, jid, f"{time.time():.6f}")
    assert got[0] == b"duplicate", got
    want = {"finished": "succeeded", "only_result": "finished", "queued_other": "queued",
            "legacy_final": "failed"}[case]
    assert f"is already {want} under another payload".encode() in got[3]
    assert snapshot(r, ns, jid) == before
    assert r.llen(nskey(ns, "active", "w2")) == 0
    assert msgpack.unpackb(r.lindex(nskey(ns, "dead"), 0))["reason"] == "duplicate_id"


def test_an_old_producers_queued_record_is_taken_and_bound(r, ns):
    p = job_payload("d3")
    r.hset(nskey(ns, "job", "d3"), mapping={"state": "queued", "enqueued_at": 1})   # no digest
    r.lpush(nskey(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "d3", f"{time.time():.6f}")[0] == b"ok"
    assert r.hget(nskey(ns, "job", "d3"), "digest").decode() == sha1(p)


def test_requeued_job_is_claimed_again_not_a_duplicate(r, ns):
    """The reaper (or a drain, or a retry) sets state=queued with the digest kept."""
    p = running_job(r, ns, "d4")
    r.lrem(nskey(ns, "active", "w1"), 1, p)
    r.hset(nskey(ns, "job", "d4"), "state", "queued")
    r.lpush(nskey(ns, "active", "w2"), p)
    assert claim(r, ns, "w2", p, "d4", f"{time.time():.6f}")[:2] == [b"ok", 2]


def refuse(r, ns, worker, payload, jid="", reason="bad_path", err="profile: gone", sha256=""):
    return r.eval(script("refuse"), 2, nskey(ns, "dead"), nskey(ns, "active", worker),
                  len(payload), sha1(payload), jid, err, "{" + ns + "}:", f"{time.time():.6f}",
                  "100", reason, worker, "3", sha256)


def test_refusal_never_marks_a_record_without_digest_dead(r, ns):
    """A producer that HSETs state=queued without a digest, then LPUSHes: a
    hostile payload with the same id refused first (say, a bad image) must
    not mark the real job dead; the real payload still claims it."""
    real = job_payload("d4n")
    queue_job(r, ns, "d4n", real)
    hostile = job_payload("d4n", image="evil")
    r.lpush(nskey(ns, "active", "w1"), hostile)
    assert refuse(r, ns, "w1", hostile, "d4n", reason="image_not_allowed", err="image: evil") == 1
    assert r.hget(nskey(ns, "job", "d4n"), "state") == b"queued"
    assert not r.hexists(nskey(ns, "job", "d4n"), "digest") and events(r, ns, "d4n") == []
    r.lpush(nskey(ns, "active", "w1"), real)
    assert claim(r, ns, "w1", real, "d4n", f"{time.time():.6f}")[0] == b"ok"


def test_release_leaves_the_record_to_the_copy_it_holds(r, ns):
    """An exact copy of a payload this worker runs, found in its active list
    by a recovery release: moved back untouched (the next claim refuses it),
    never requeueing the running job."""
    held = running_job(r, ns, "d4c", worker="w1")
    r.lpush(nskey(ns, "active", "w1"), held)                   # the copy, BLMOVEd into a lost reply
    n = r.eval(script("release"), 4, nskey(ns, "active", "w1"), nskey(ns, "queue"), nskey(ns, "worker", "w1"),
               nskey(ns, "workers"), "{" + ns + "}:", f"{time.time():.3f}", "100", "recovered", "0",
               f"{len(held)}:{sha1(held)}")
    assert n == 1
    assert r.lrange(nskey(ns, "active", "w1"), 0, -1) == [held] and r.lrange(nskey(ns, "queue"), 0, -1) == [held]
    h = r.hgetall(nskey(ns, "job", "d4c"))
    assert h[b"state"] == b"running" and b"requeues" not in h
    assert [e["type"] for e in events(r, ns, "d4c")] == ["started"]


def test_a_refused_emit_publishes_nothing(r, ns):
    """An emit Redis refuses for memory (OOM at its first write) is sent again
    by the worker: nothing of it may have been published the first time."""
    p = running_job(r, ns, "d4e")
    ps = r.pubsub()
    ps.subscribe(nskey(ns, "progress", "d4e"))
    assert ps.get_message(timeout=1)["type"] == "subscribe"
    r.config_set("maxmemory", "1")
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="OOM"):
            r.eval(script("emit"), 5, nskey(ns, "job", "d4e"), nskey(ns, "progress", "d4e"), nskey(ns, "events"),
                   nskey(ns, "log", "d4e"), nskey(ns, "cancel"), "w1", "1", pack({"type": "log", "seq": 2}), "2",
                   "log", "100", "0", "", "d4e")
    finally:
        r.config_set("maxmemory", "0")
    assert ps.get_message(timeout=0.5) is None
    ps.close()
    assert p


def test_refused_duplicate_of_a_finished_job_leaves_it_alone(r, ns):
    p = running_job(r, ns, "d5")
    assert finish(r, ns, "w1", 1, p, "d5") == b"ok"
    before = snapshot(r, ns, "d5")
    bad = job_payload("d5", image="evil:latest")
    r.lpush(nskey(ns, "active", "w2"), bad)
    assert refuse(r, ns, "w2", bad, "d5", "image_not_allowed", "image: not allowed") == 1
    assert snapshot(r, ns, "d5") == before
    assert [e["type"] for e in events(r, ns, "d5")][-1] == "finished"
    entry = msgpack.unpackb(r.lindex(nskey(ns, "dead"), 0))
    assert entry["reason"] == "image_not_allowed" and entry["payload"] == bad


def test_refuse_finds_the_payload_by_length_and_sha1(r, ns):
    bad = job_payload("d6", profile="../etc")
    other = job_payload("d6x")
    r.lpush(nskey(ns, "active", "w1"), other, bad, other)
    assert refuse(r, ns, "w1", bad, "d6") == 1
    assert r.lrange(nskey(ns, "active", "w1"), 0, -1) == [other, other]
    h = r.hgetall(nskey(ns, "job", "d6"))        # no record before: this payload owns it
    assert h[b"state"] == b"dead" and h[b"digest"].decode() == sha1(bad)
    assert [e["type"] for e in events(r, ns, "d6")] == ["dead"]
    # a replay of the same call: nothing is pushed twice
    assert refuse(r, ns, "w1", bad, "d6") == 0
    assert r.llen(nskey(ns, "dead")) == 1


def test_refuse_of_a_payload_over_max_payload_keeps_its_hashes(r, ns):
    import hashlib
    big = b"\xdb" + (3 << 20).to_bytes(4, "big") + b"x" * (3 << 20)
    r.lpush(nskey(ns, "active", "w1"), big)
    digest = hashlib.sha256(big).hexdigest()
    assert refuse(r, ns, "w1", big, "", "payload_too_large", "too big", sha256=digest) == 1
    assert r.llen(nskey(ns, "active", "w1")) == 0
    entry = msgpack.unpackb(r.lindex(nskey(ns, "dead"), 0))
    assert "payload" not in entry
    assert entry["payload_len"] == len(big) and entry["payload_sha256"] == digest
    assert entry["payload_prefix"] == big[:256] and isinstance(entry["payload_prefix"], bytes)
    assert len(r.lindex(nskey(ns, "dead"), 0)) < 1024


def test_dead_maxlen_trims_the_dead_list(r, ns):
    for i in range(5):
        p = job_payload(f"t{i}", profile="../x")
        r.lpush(nskey(ns, "active", "w1"), p)
        refuse(r, ns, "w1", p, f"t{i}")
    assert r.llen(nskey(ns, "dead")) == 3                      # refuse() passes dead_maxlen 3
    assert msgpack.unpackb(r.lindex(nskey(ns, "dead"), 0))["id"] == "t4"


# ---------------------------------------------------------------- the reaper and release

def dead_worker(r, ns, w, t0):
    r.zadd(nskey(ns, "workers"), {w: t0 - 100})
    r.hset(nskey(ns, "clock"), "beat", f"{t0 - 1:.3f}")


def test_reaper_moves_a_duplicate_without_touching_the_real_job(r, ns):
    t0 = time.time()
    p = running_job(r, ns, "d7", worker="live")
    r.hset(nskey(ns, "worker", "live"), "id", "live")       # alive: its heartbeat is there
    before = snapshot(r, ns, "d7")
    dup = job_payload("d7", output="x")
    r.lpush(nskey(ns, "active", "gone1"), dup, p)            # a copy too: bytes equal, another lease
    dead_worker(r, ns, "gone1", t0)
    got = beat(r, ns, "w1", t0)
    assert got[0] == [b"gone1", b"2"]
    assert sorted(r.lrange(nskey(ns, "queue"), 0, -1)) == sorted([dup, p])
    assert snapshot(r, ns, "d7") == before


def test_release_keeps_what_we_hold_by_length_and_sha1(r, ns):
    held = running_job(r, ns, "d8", worker="w1")
    stray = job_payload("d9")
    queue_job(r, ns, "d9", stray)
    r.lpush(nskey(ns, "active", "w1"), stray)
    n = r.eval(script("release"), 4, nskey(ns, "active", "w1"), nskey(ns, "queue"), nskey(ns, "worker", "w1"),
               nskey(ns, "workers"), "{" + ns + "}:", f"{time.time():.3f}", "100", "recovered", "0",
               f"{len(held)}:{sha1(held)}")
    assert n == 1
    assert r.lrange(nskey(ns, "active", "w1"), 0, -1) == [held]
    assert r.lrange(nskey(ns, "queue"), 0, -1) == [stray]
    assert r.hget(nskey(ns, "job", "d9"), "requeues") == b"1"
    assert r.hget(nskey(ns, "job", "d8"), "state") == b"running"


# ---------------------------------------------------------------- the msgpack scanner

def scan(r, p):
    return r.eval((LUA / "prelude.lua").read_text() + "return payload_id(ARGV[1]) or false\n", 0, p)


def ext(code, data):
    return msgpack.ExtType(code, data)


SCAN_OK = [
    {"id": "a1", "meta": {"b": b"\x00\xff" * 10, "b16": b"x" * 300, "b32": b"y" * 70000}},
    {"meta": [ext(1, b"1"), ext(2, b"22"), ext(3, b"4444"), ext(4, b"8" * 8), ext(5, b"6" * 16),
              ext(6, b"three"), ext(7, b"z" * 300), ext(8, b"w" * 70000)], "id": "a1"},
    {"n": None, "t": True, "f": False, "i": [0, 127, -1, -32, 200, -100, 40000, -40000, 1 << 33,
                                           -(1 << 33), 1 << 63], "x": 1.5, "id": "a1"},
    {"s": "é" * 40, "s16": "q" * 300, "s32": "r" * 70000, "m": {"id": "inner"}, "id": "a1"},
    {"deep": [[[[[[[[[[[[[[1]]]]]]]]]]]]]], "id": "a1"},       # 15 containers in all
]


def test_scanner_reads_what_job_decode_accepts(r):
    for obj in SCAN_OK:
        assert scan(r, pack(obj)) == b"a1", obj
    ts = msgpack.Timestamp(1700000000, 5)
    assert scan(r, pack({"id": "a1", "at": ts})) == b"a1"
    assert scan(r, pack({"id": "a1", "f32": 0.0}).replace(b"\xcb" + bytes(8), b"\xca" + bytes(4))) == b"a1"
    big = {str(i): i for i in range(20)}
    big["id"] = "a1"
    assert scan(r, pack(big)) == b"a1"                   # map16


def test_scanner_refuses_what_job_decode_refuses(r):
    ok = pack({"id": "a1", "x": [1, 2]})
    bad = [
        ok[:-1],                                           # cut off
        ok + b"\x00",                                      # trailing
        b"\x92\xa2id\xa2a1",                               # not a map
        pack({"id": 7}),                                   # not a str
        pack({"id": "../x"}),                              # not the pattern
        pack({"id": "a" * 65}),
        b"\x82\xa2id\xa2a1\xa2id\xa2a2",                   # id twice
        b"\x82\xa2id\xa2a1\xa1x\xdd\xff\xff\xff\xff",      # array32 announcing 4G elements
        b"\x81\xa2id\xc1",                                 # 0xc1
        pack({"deep": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]], "id": "a1"}),   # 16 containers
        pack({"x": 1}),
        b"",
    ]
    for p in bad:
        assert scan(r, p) is None, p


def test_reaper_counts_a_lost_job_with_bin_and_ext_meta(r, ns):
    """cmsgpack refuses bin and ext: such a payload still counts as lost, and goes dead."""
    p = pack({"id": "e1", "profile": "p", "output": "o",
              "meta": {"bin": b"\x00\x01", "ext": ext(5, b"zz"), "ts": msgpack.Timestamp(1, 2)}})
    queue_job(r, ns, "e1", p)
    t0 = time.time()
    for n in (1, 2, 3):
        r.lpush(nskey(ns, "active", "gone2"), p)
        assert claim(r, ns, "gone2", p, "e1", f"{t0 + n:.6f}")[0] == b"ok"
        dead_worker(r, ns, "gone2", t0 + 10 * n)
        r.delete(nskey(ns, "reaper"))
        assert beat(r, ns, "w1", t0 + 10 * n, max_attempts=3)[0] == [b"gone2", b"1"]
        if n < 3:
            assert r.lrange(nskey(ns, "queue"), 0, -1) == [p]
            r.delete(nskey(ns, "queue"))
    h = r.hgetall(nskey(ns, "job", "e1"))
    assert h[b"lost"] == b"3" and h[b"state"] == b"dead"
    assert [e["type"] for e in events(r, ns, "e1")].count("requeued") == 2
    entry = msgpack.unpackb(r.lindex(nskey(ns, "dead"), 0))
    assert entry["reason"] == "worker_lost" and entry["payload"] == p


# ---------------------------------------------------------------- submit.lua

def submit_lua(r, ns, jid, payload, mode="new"):
    return r.eval(shared_script("shared/lua/submit.lua"), 4, nskey(ns, "job", jid), nskey(ns, "queue"),
                  nskey(ns, "result", jid), nskey(ns, "log", jid), payload, f"{time.time():.6f}", mode)


def test_submit_new_then_exists_then_rerun(r, ns):
    p = job_payload("s1")
    assert submit_lua(r, ns, "s1", p) == [b"ok", sha1(p).encode()]
    h = r.hgetall(nskey(ns, "job", "s1"))
    assert h[b"state"] == b"queued" and h[b"digest"].decode() == sha1(p)
    assert submit_lua(r, ns, "s1", job_payload("s1", x=1)) == [b"exists", b"queued"]
    assert submit_lua(r, ns, "s1", p, "rerun") == [b"busy", b"queued"]
    # it runs and finishes
    r.rpoplpush(nskey(ns, "queue"), nskey(ns, "active", "w1"))
    assert claim(r, ns, "w1", p, "s1", f"{time.time():.6f}")[0] == b"ok"
    assert submit_lua(r, ns, "s1", p, "rerun") == [b"busy", b"running"]
    assert finish(r, ns, "w1", 1, p, "s1") == b"ok"
    assert submit_lua(r, ns, "s1", p) == [b"exists", b"succeeded"]
    r.hset(nskey(ns, "cancel"), "s1", 1)
    q = job_payload("s1", meta={"second": 1})
    assert submit_lua(r, ns, "s1", q, "rerun") == [b"ok", sha1(q).encode()]
    h = r.hgetall(nskey(ns, "job", "s1"))
    assert h[b"state"] == b"queued" and h[b"digest"].decode() == sha1(q) and h[b"attempt"] == b"1"
    assert not ({b"finished_at", b"exit_code", b"error"} & set(h))
    assert r.ttl(nskey(ns, "job", "s1")) == -1 and r.ttl(nskey(ns, "log", "s1")) == -1
    assert not r.exists(nskey(ns, "result", "s1")) and not r.hexists(nskey(ns, "cancel"), "s1")
    r.rpoplpush(nskey(ns, "queue"), nskey(ns, "active", "w1"))
    assert claim(r, ns, "w1", q, "s1", f"{time.time():.6f}")[:3] == [b"ok", 2, 3]
    # only the result left (the hash deleted by hand): still known
    assert submit_lua(r, ns, "s2", job_payload("s2")) [0] == b"ok"
    r.delete(nskey(ns, "job", "s2"))
    r.lpush(nskey(ns, "result", "s2"), b"x")
    assert submit_lua(r, ns, "s2", job_payload("s2")) == [b"exists", b"finished"]
    with pytest.raises(Exception, match="new.*rerun"):
        submit_lua(r, ns, "s3", job_payload("s3"), "again")


# ---------------------------------------------------------------- events without reading the stream

def emit(r, ns, worker, attempt, jid, seq, typ="log"):
    ev = pack({"id": jid, "seq": seq, "type": typ, "attempt": attempt, "lines": ["x"]})
    return r.eval(script("emit"), 5, nskey(ns, "job", jid), nskey(ns, "progress", jid), nskey(ns, "events"),
                  nskey(ns, "log", jid), nskey(ns, "cancel"), worker, attempt, ev, seq, typ, "100",
                  "0" if typ == "log" else "1", "", jid)


def test_emit_replayed_is_refused_by_the_stream_id_and_not_published(r, ns):
    """Entry ids are 0-<seq>: a replayed event (or one overtaken by a later
    one) is refused by Redis itself, and neither added nor published."""
    p = job_payload("q1")
    queue_job(r, ns, "q1", p)
    r.lpush(nskey(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "q1", f"{time.time():.6f}") == [b"ok", 1, 1]
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(nskey(ns, "progress", "q1"))
    while ps.get_message(timeout=0.2) is not None:
        pass
    assert emit(r, ns, "w1", 1, "q1", 2) == 1
    assert emit(r, ns, "w1", 1, "q1", 3) == 1
    assert emit(r, ns, "w1", 1, "q1", 3) == 1            # replayed after a lost reply
    assert emit(r, ns, "w1", 1, "q1", 2) == 1            # overtaken by seq 3
    got = []
    while (m := ps.get_message(timeout=0.2)) is not None:
        got.append(msgpack.unpackb(m["data"])["seq"])
    ps.close()
    assert got == [2, 3]
    assert [eid for eid, _ in r.xrange(nskey(ns, "log", "q1"))] == [b"0-1", b"0-2", b"0-3"]
    assert [e["seq"] for e in events(r, ns, "q1")] == [1, 2, 3]


def test_next_attempt_continues_after_events_the_hash_never_saw(r, ns):
    """emit does not write the hash's seq; a claim after a requeue that sent
    no event (a bare state=queued) still continues after the stream."""
    p = job_payload("q2")
    queue_job(r, ns, "q2", p)
    r.lpush(nskey(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "q2", f"{time.time():.6f}") == [b"ok", 1, 1]
    assert emit(r, ns, "w1", 1, "q2", 2) == 1 and emit(r, ns, "w1", 1, "q2", 3) == 1
    r.hset(nskey(ns, "job", "q2"), "state", "queued")
    assert claim(r, ns, "w1", p, "q2", f"{time.time() + 1:.6f}") == [b"ok", 2, 4]
    assert [e["seq"] for e in events(r, ns, "q2")] == [1, 2, 3, 4]
    assert r.hget(nskey(ns, "job", "q2"), "seq") == b"4"


def test_stream_of_an_older_worker_keeps_its_ids_and_dedupes_by_seq(r, ns):
    """A stream written with ids of Redis's clock (an older worker) is
    appended to with such ids, and a replay is still recognised by seq."""
    p = job_payload("q3")
    queue_job(r, ns, "q3", p)
    r.xadd(nskey(ns, "log", "q3"), {"seq": 1, "type": "started", "event": pack({"seq": 1})})
    r.hset(nskey(ns, "job", "q3"), mapping={"state": "running", "worker": "w1", "attempt": 1})
    assert emit(r, ns, "w1", 1, "q3", 2) == 1
    assert emit(r, ns, "w1", 1, "q3", 2) == 1
    entries = r.xrange(nskey(ns, "log", "q3"))
    assert [f[b"seq"] for _, f in entries] == [b"1", b"2"]
    assert not any(eid.startswith(b"0-") for eid, _ in entries)


def test_cancelled_claim_of_a_record_without_seq_reads_the_stream(r, ns):
    p = job_payload("q4")
    queue_job(r, ns, "q4", p)
    for s in (1, 2, 3):
        r.xadd(nskey(ns, "log", "q4"), {"seq": s, "type": "log", "event": b"x"}, id=f"0-{s}")
    r.hset(nskey(ns, "cancel"), "q4", time.time())
    r.lpush(nskey(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "q4", f"{time.time():.6f}") == [b"cancelled", 1, 3]


# ---------------------------------------------------------------- the beat's modes

def beat_mode(r, ns, worker, now, mode, ttl=3.0, host="h"):
    return r.eval(script("beat"), 7, nskey(ns, "worker", worker), nskey(ns, "workers"), nskey(ns, "reaper"),
                  nskey(ns, "delayed"), nskey(ns, "queue"), nskey(ns, "dead"), nskey(ns, "orphans", host),
                  worker, f"{now:.3f}", "60000", "1000", "{" + ns + "}:", 3,
                  host, "1", "1.0.0", f"{now:.3f}", "1", "0", "", "100", f"{ttl:.3f}", "0", mode,
                  "1000000000", "0")   # disk_free, disk_low


def test_beat_modes_write_only_what_they_name(r, ns):
    t0 = time.time()
    assert beat_mode(r, ns, "w1", t0, "seo") == [[], [], 0, 1]            # registered: new in the set
    h = r.hgetall(nskey(ns, "worker", "w1"))
    assert h[b"host"] == b"h" and h[b"running"] == b"0" and r.pttl(nskey(ns, "worker", "w1")) > 50000
    assert r.hget(nskey(ns, "hosts"), "w1") == b"h"
    r.hset(nskey(ns, "worker", "w1"), "host", "changed")
    assert beat_mode(r, ns, "w1", t0 + 1, "d") == [[], [], -1, 0]        # no static fields, no LLEN
    assert r.hget(nskey(ns, "worker", "w1"), "host") == b"changed"
    assert r.zscore(nskey(ns, "workers"), "w1") == pytest.approx(t0 + 1, abs=0.01)
    assert not r.exists(nskey(ns, "clock")) and not r.exists(nskey(ns, "reaper"))


def test_reap_mode_goes_by_score_alone_and_deletes_the_dead_hash(r, ns):
    """Mode r (the caller took the lock and keeps the outage rule): the
    score decides, not the hash (which outlives the beats); the dead
    worker's hash goes, and {ns}:clock is not read."""
    t0 = time.time()
    p = running_job(r, ns, "q5", worker="gone3")
    r.zadd(nskey(ns, "workers"), {"gone3": t0 - 10, "live": t0 - 1})
    r.hset(nskey(ns, "worker", "gone3"), mapping={"id": "gone3", "host": "h2"})
    r.hset(nskey(ns, "hosts"), "gone3", "h2")
    r.hset(nskey(ns, "clock"), "back", f"{t0:.3f}")          # would stop a 'full' reaper
    got = beat_mode(r, ns, "w1", t0, "r")
    assert got[0] == [b"gone3", b"1"]
    assert r.lrange(nskey(ns, "queue"), 0, -1) == [p] and r.hget(nskey(ns, "job", "q5"), "state") == b"queued"
    assert not r.exists(nskey(ns, "worker", "gone3")) and r.zscore(nskey(ns, "workers"), "gone3") is None
    assert r.smembers(nskey(ns, "orphans", "h2")) == {b"gone3"}
    assert r.zscore(nskey(ns, "workers"), "live") is not None
    assert r.zscore(nskey(ns, "workers"), "w1") is None      # mode r writes no score: the plain ZADD did


def test_beat_says_when_the_record_is_gone(r, ns):
    """A hash that expired under a live worker (a refresh lost) is found
    by the next 'e' or 'd' beat, which asks the worker to write it again."""
    t0 = time.time()
    assert beat_mode(r, ns, "w2", t0, "seo")[3] == 1
    assert beat_mode(r, ns, "w2", t0 + 1, "e")[3] == 0
    r.delete(nskey(ns, "worker", "w2"))
    assert beat_mode(r, ns, "w2", t0 + 2, "e")[3] == 1
    assert beat_mode(r, ns, "w2", t0 + 3, "d")[3] == 1
    assert beat_mode(r, ns, "w2", t0 + 4, "d")[3] == 0
