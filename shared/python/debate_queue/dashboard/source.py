"""Everything the dashboard reads from and writes to Redis, in one place.

This is a thin adapter: it turns what the data source gives into plain
dicts the page can take as JSON.  Every list is read with a range
(LRANGE/ZRANGE with bounds), never KEYS or SCAN: the dashboard costs the
same with ten jobs or a million.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any, AsyncIterator, Optional

import msgpack
import redis.asyncio as aioredis

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
FINAL = ("succeeded", "failed", "timed_out", "oom_killed", "cancelled", "error", "dead")


def text(v: Any) -> Any:
    """bytes -> str (invalid UTF-8 replaced); containers recursively; the rest as is."""
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, dict):
        return {text(k): text(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [text(x) for x in v]
    if isinstance(v, float) and v != v:
        return None
    return v


def unpack(raw: bytes) -> Any:
    """A msgpack value, or None when the bytes are not one."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        try:
            return text(msgpack.unpackb(raw, raw=True, strict_map_key=False))
        except Exception:
            return None


def num(v: Any) -> Optional[float]:
    """A float from a hash field (bytes/str/number), None when absent or not a number."""
    if v is None:
        return None
    try:
        return float(text(v))
    except (TypeError, ValueError):
        return None


class Source:
    """One namespace of one Redis, read the way the page needs it."""

    def __init__(self, r: aioredis.Redis, namespace: str) -> None:
        self.r = r
        self.ns = namespace

    def key(self, *parts: str) -> str:
        return ":".join([f"{{{self.ns}}}", *parts])

    # ---------------------------------------------------------------- reads

    async def counts_and_lists(self, queued_count: int, results_count: int) -> dict[str, Any]:
        """The fleet in one round trip, then one more for the workers and their jobs."""
        p = self.r.pipeline(transaction=False)
        p.llen(self.key("queue"))
        p.zcard(self.key("delayed"))
        p.llen(self.key("dead"))
        p.zrange(self.key("workers"), 0, 999, withscores=True)
        p.lrange(self.key("queue"), -queued_count, -1)
        p.lrange(self.key("results"), 0, results_count - 1)
        p.hlen(self.key("cancel"))
        nq, nd, ndead, wz, qraw, rraw, ncancel = await p.execute()
        ids = [text(w) for w, _ in wz]
        p = self.r.pipeline(transaction=False)
        for w in ids:
            p.hgetall(self.key("worker", w))
            p.lrange(self.key("active", w), 0, 255)
        got = await p.execute() if ids else []
        workers, running = [], []
        for i, (w, score) in enumerate(wz):
            h = text(got[2 * i])
            active = got[2 * i + 1]
            wid = ids[i]
            conc = int(num(h.get("concurrency")) or 0)
            nrun = int(num(h.get("running")) or 0)
            workers.append({
                "id": wid, "host": h.get("host", ""), "pid": h.get("pid", ""),
                "version": h.get("version", ""), "started_at": num(h.get("started_at")),
                "beat": num(h.get("beat")) or score, "concurrency": conc, "running": nrun,
                "free": max(conc - nrun, 0), "lost": not h,
                "jobs": [j for j in str(h.get("jobs", "")).split(",") if j],
            })
            for raw in active:
                job = unpack(raw)
                if isinstance(job, dict) and isinstance(job.get("id"), str):
                    running.append({"id": job["id"], "worker": wid, "payload": job})
        p = self.r.pipeline(transaction=False)
        for j in running:
            p.hgetall(self.key("job", j["id"]))
        cancel_ids = [j["id"] for j in running]
        queued = [self._queued_entry(x) for x in reversed(qraw)]
        cancel_ids += [q["id"] for q in queued if q["id"]]
        if cancel_ids and ncancel:
            p.hmget(self.key("cancel"), cancel_ids)
        got = await p.execute() if running or (cancel_ids and ncancel) else []
        asked = dict(zip(cancel_ids, got[len(running)])) if cancel_ids and ncancel else {}
        for j, h in zip(running, got[: len(running)]):
            h = text(h)
            pl = j.pop("payload")
            j.update({
                "state": h.get("state", "queued"), "attempt": int(num(h.get("attempt")) or 0),
                "phase": h.get("phase", ""), "started_at": num(h.get("started_at")),
                "timeout": num(pl.get("timeout")), "warning": num(pl.get("warning")),
                "profile": pl.get("profile", ""), "cancel": asked.get(j["id"]) is not None,
            })
        for q in queued:
            q["cancel"] = asked.get(q["id"]) is not None
        return {
            "counts": {"queued": nq, "delayed": nd, "dead": ndead, "workers": len(ids),
                       "running": len(running),
                       "slots": sum(w["concurrency"] for w in workers if not w["lost"]),
                       "free": sum(w["free"] for w in workers if not w["lost"])},
            "workers": workers, "running": running, "queued": queued,
            "results": [self._result_row(unpack(x)) for x in rraw],
        }

    def _queued_entry(self, raw: bytes) -> dict[str, Any]:
        job = unpack(raw)
        if not isinstance(job, dict):
            return {"id": "", "profile": "", "enqueued_at": None, "bad": f"unreadable payload ({len(raw)} bytes)"}
        jid = job.get("id")
        return {"id": jid if isinstance(jid, str) and ID_RE.match(jid) else "",
                "profile": text(job.get("profile", "")), "enqueued_at": num(job.get("enqueued_at")),
                "bad": "" if isinstance(jid, str) and ID_RE.match(jid) else "no valid id"}

    @staticmethod
    def _result_row(res: Any) -> dict[str, Any]:
        if not isinstance(res, dict):
            return {"id": "", "status": "error", "error": "unreadable result"}
        return {k: res.get(k) for k in ("id", "status", "exit_code", "duration", "started_at",
                                         "finished_at", "worker", "attempt", "error")}

    async def queued(self, start: int, count: int) -> dict[str, Any]:
        """Queued jobs, the next to run first (workers take from the right)."""
        p = self.r.pipeline(transaction=False)
        p.llen(self.key("queue"))
        p.lrange(self.key("queue"), -(start + count), -(start + 1))
        total, raw = await p.execute()
        return {"total": total, "start": start, "items": [self._queued_entry(x) for x in reversed(raw)]}

    async def results(self, start: int, count: int) -> dict[str, Any]:
        """Recent results, the newest first."""
        p = self.r.pipeline(transaction=False)
        p.llen(self.key("results"))
        p.lrange(self.key("results"), start, start + count - 1)
        total, raw = await p.execute()
        return {"total": total, "start": start, "items": [self._result_row(unpack(x)) for x in raw]}

    async def dead(self, start: int, count: int) -> dict[str, Any]:
        """Dead letters, the newest first, each with a digest that names it for a retry."""
        p = self.r.pipeline(transaction=False)
        p.llen(self.key("dead"))
        p.lrange(self.key("dead"), start, start + count - 1)
        total, raw = await p.execute()
        items = []
        for i, x in enumerate(raw):
            d = unpack(x)
            d = d if isinstance(d, dict) else {}
            payload = d.get("payload")
            if isinstance(payload, str):
                payload = payload.encode("utf-8", "surrogateescape")
            pj = unpack(payload) if isinstance(payload, (bytes, bytearray)) else None
            items.append({
                "index": start + i, "digest": hashlib.sha256(x).hexdigest(),
                "reason": text(d.get("reason", "")), "error": text(d.get("error", "")),
                "id": text(d.get("id", "")), "worker": text(d.get("worker", "")), "ts": num(d.get("ts")),
                "size": len(payload) if isinstance(payload, (bytes, bytearray)) else 0,
                "profile": text(pj.get("profile", "")) if isinstance(pj, dict) else "",
                "retryable": isinstance(payload, (bytes, bytearray)),
            })
        return {"total": total, "start": start, "items": items}

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job hash and, when it finished, its result."""
        p = self.r.pipeline(transaction=False)
        p.hgetall(self.key("job", job_id))
        p.lindex(self.key("result", job_id), 0)
        p.hexists(self.key("cancel"), job_id)
        h, res, asked = await p.execute()
        return {"id": job_id, "hash": text(h), "result": text(unpack(res)) if res else None,
                "cancel": bool(asked)}

    async def events(self, job_id: str, after_seq: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The job's events from its stream after seq after_seq: replay, then XREAD BLOCK.

        Ends after a finished or dead event.  Raises on a Redis error; the
        caller reconnects from the last seq it passed on.
        """
        key = self.key("log", job_id)
        last = "0-0"
        while True:
            got = await self.r.xread({key: last}, count=200, block=5000)
            for _key, entries in got or []:
                for sid, fields in entries:
                    last = sid
                    ev = unpack(fields.get(b"event", b""))
                    if not isinstance(ev, dict):
                        continue
                    ev = text(ev)
                    seq = ev.get("seq")
                    if not isinstance(seq, int) or seq <= after_seq:
                        continue
                    after_seq = seq
                    yield ev
                    if ev.get("type") in ("finished", "dead"):
                        return

    # ---------------------------------------------------------------- writes

    async def cancel(self, job_id: str) -> None:
        """Ask for a cancel the way `enqueue cancel` does (PROTOCOL: Cancelling)."""
        await self.r.hset(self.key("cancel"), job_id, f"{time.time():.6f}")

    RETRY = """
    if KEYS[3] ~= '' then
      local st = redis.call('HGET', KEYS[3], 'state')
      if st == 'queued' or st == 'running' then return -1 end
    end
    if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
    redis.call('LPUSH', KEYS[2], ARGV[2])
    if KEYS[3] ~= '' then
      redis.call('DEL', KEYS[3])
      redis.call('HSET', KEYS[3], 'state', 'queued', 'enqueued_at', ARGV[3], 'last_error', ARGV[4])
    end
    return 1
    """

    async def retry_dead(self, index: int, digest: str) -> tuple[int, str]:
        """Requeue the dead letter at index if it is still the one the page showed.

        The page sends the digest of the entry it listed: an index alone
        could name another entry once a worker pushed a new dead letter.
        The entry is removed by value and its payload pushed in one script
        (the one `enqueue retry-dead` runs), so a double click queues it once.
        Returns (HTTP status, message).
        """
        raw = await self.r.lindex(self.key("dead"), index)
        if raw is None or hashlib.sha256(raw).hexdigest() != digest:
            return 409, "that dead letter moved or is gone: reload the list"
        d = unpack(raw)
        if not isinstance(d, dict) or not isinstance(d.get("payload"), (bytes, bytearray)):
            return 422, "that dead letter has no payload to retry"
        jid = d.get("id")
        jkey = self.key("job", jid) if isinstance(jid, str) and ID_RE.match(jid) else ""
        v = await self.r.eval(self.RETRY, 3, self.key("dead"), self.key("queue"), jkey,
                              raw, d["payload"], f"{time.time():.6f}", text(d.get("error", "")))
        if v == 1:
            return 200, f"requeued {jid or 'the payload'}"
        if v == -1:
            return 409, f"job {jid} is queued or running; left alone"
        return 409, "that dead letter was removed meanwhile"
