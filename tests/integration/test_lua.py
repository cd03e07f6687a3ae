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
from pathlib import Path

import msgpack
import pytest

from conftest import REPO

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


def k(ns: str, *parts: str) -> str:
    return "{" + ns + "}:" + ":".join(parts)


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
    return r.eval(script("claim"), 6, k(ns, "job", jid), k(ns, "active", worker), k(ns, "cancel"),
                  k(ns, "log", jid), k(ns, "progress", jid), k(ns, "events"),
                  worker, payload, now, jid, ev, so, ao, "100")


def finish(r, ns, worker, attempt, payload, jid, status="succeeded", seq=2, retry_due="0"):
    res = pack({"id": jid, "status": status, "attempt": attempt, "worker": worker})
    fin = pack({"id": jid, "seq": seq, "type": "finished", "attempt": attempt, "result": {}})
    return r.eval(script("finish"), 9, k(ns, "job", jid), k(ns, "active", worker), k(ns, "results"),
                  k(ns, "result", jid), k(ns, "progress", jid), k(ns, "events"), k(ns, "log", jid),
                  k(ns, "cancel"), k(ns, "delayed"),
                  worker, attempt, payload, res, fin, seq, status, "0", f"{time.time():.6f}", "",
                  "3600", "100", jid, retry_due, b"")


def beat(r, ns, worker, now, ttl=3.0, max_attempts=3, host="h"):
    return r.eval(script("beat"), 7, k(ns, "worker", worker), k(ns, "workers"), k(ns, "reaper"),
                  k(ns, "delayed"), k(ns, "queue"), k(ns, "dead"), k(ns, "orphans", host),
                  worker, f"{now:.3f}", str(int(ttl * 1000)), "1", "{" + ns + "}:", max_attempts,
                  host, "1", "1.0.0", f"{now:.3f}", "1", "0", "", "100", f"{ttl:.3f}")


def events(r, ns, jid):
    return [msgpack.unpackb(f[b"event"]) for _, f in r.xrange(k(ns, "log", jid))]


def queue_job(r, ns, jid, payload, **fields):
    """A job the way the backend queues it (hash then LPUSH), already BLMOVEd to worker."""
    r.hset(k(ns, "job", jid), mapping={"state": "queued", "enqueued_at": time.time(), **fields})


# ---------------------------------------------------------------- claim

def test_every_script_text_is_prelude_plus_file():
    for name in ("claim", "emit", "finish", "refuse", "beat", "release"):
        text = script(name)
        assert text.startswith("-- prelude.lua") and f"-- {name}.lua" in text


def test_replayed_claim_answers_as_the_first(r, ns):
    """The same claim sent twice (its answer lost): one attempt, one started."""
    p = job_payload("j1")
    queue_job(r, ns, "j1", p)
    r.lpush(k(ns, "active", "w1"), p)
    now = f"{time.time():.6f}"
    first = claim(r, ns, "w1", p, "j1", now)
    again = claim(r, ns, "w1", p, "j1", now)
    assert first == [b"ok", 1, 1] and again == first
    h = r.hgetall(k(ns, "job", "j1"))
    assert h[b"attempt"] == b"1" and h[b"state"] == b"running" and h[b"worker"] == b"w1"
    assert [e["type"] for e in events(r, ns, "j1")] == ["started"]
    # a new claim (another now) is a new attempt, continuing the seq
    r.hset(k(ns, "job", "j1"), "state", "queued")
    assert claim(r, ns, "w1", p, "j1", f"{time.time() + 1:.6f}") == [b"ok", 2, 2]


def test_claim_of_a_payload_no_longer_ours_is_gone(r, ns):
    p = job_payload("j2")
    queue_job(r, ns, "j2", p)
    assert claim(r, ns, "w1", p, "j2", f"{time.time():.6f}") == [b"gone", 0, 0]
    assert r.hget(k(ns, "job", "j2"), "state") == b"queued"
    assert events(r, ns, "j2") == []


# ---------------------------------------------------------------- finish

def test_stale_finish_is_refused(r, ns):
    """A worker whose lease moved on (the reaper gave the job to w2) records nothing."""
    p = job_payload("j3")
    queue_job(r, ns, "j3", p)
    r.lpush(k(ns, "active", "w1"), p)
    assert claim(r, ns, "w1", p, "j3", f"{time.time():.6f}")[0] == b"ok"
    # w1 is reaped; w2 takes the job: attempt 2
    r.lrem(k(ns, "active", "w1"), 1, p)
    r.hset(k(ns, "job", "j3"), "state", "queued")
    r.lpush(k(ns, "active", "w2"), p)
    assert claim(r, ns, "w2", p, "j3", f"{time.time():.6f}")[:2] == [b"ok", 2]
    r.lpush(k(ns, "active", "w1"), p)          # even with the payload back in w1's list
    assert finish(r, ns, "w1", 1, p, "j3") == b"stale"
    assert r.llen(k(ns, "results")) == 0 and not r.exists(k(ns, "result", "j3"))
    assert finish(r, ns, "w2", 2, p, "j3", seq=3) == b"ok"
    assert finish(r, ns, "w2", 2, p, "j3", seq=3) == b"dup"      # replayed: recognised
    assert r.llen(k(ns, "results")) == 1
    assert r.hget(k(ns, "job", "j3"), "state") == b"succeeded"
    assert r.lrange(k(ns, "active", "w2"), 0, -1) == []


# ---------------------------------------------------------------- the reaper

def test_reaper_respects_the_outage_gap(r, ns):
    """After a gap in beats longer than the ttl (Redis was away), nobody is
    reaped until the fleet had a ttl to beat again; then the dead one is."""
    p = job_payload("j4")
    t0 = time.time()
    queue_job(r, ns, "j4", p)
    r.lpush(k(ns, "active", "dead1"), p)
    r.zadd(k(ns, "workers"), {"dead1": t0 - 100})
    r.hset(k(ns, "job", "j4"), mapping={"state": "running", "worker": "dead1", "attempt": 1})
    r.hset(k(ns, "clock"), "beat", f"{t0 - 60:.3f}")     # the last beat: a minute ago

    got = beat(r, ns, "w1", t0)
    assert got[0] == [] and r.llen(k(ns, "active", "dead1")) == 1
    assert float(r.hget(k(ns, "clock"), "back")) == pytest.approx(t0, abs=0.01)
    r.delete(k(ns, "reaper"))
    got = beat(r, ns, "w1", t0 + 2.9)                     # still within the ttl after coming back
    assert got[0] == [] and r.llen(k(ns, "active", "dead1")) == 1
    r.delete(k(ns, "reaper"))
    got = beat(r, ns, "w1", t0 + 3.5)
    assert got[0] == [b"dead1", b"1"]
    assert r.lrange(k(ns, "queue"), 0, -1) == [p]
    h = r.hgetall(k(ns, "job", "j4"))
    assert h[b"state"] == b"queued" and h[b"lost"] == b"1"
    ev = events(r, ns, "j4")
    assert [e["type"] for e in ev] == ["requeued"] and ev[0]["reason"] == "worker_lost"
