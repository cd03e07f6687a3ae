"""What the dashboard reads and changes, as plain dicts the page takes as JSON.

Most of it is the package's AsyncClient (events, status, cancel,
retry_dead, dead, queued, recent_results).  What the client does not
offer is read here from Redis directly, through the client's own
connection (`client.redis`), and only here:

- the fleet snapshot in three pipelined round trips (the lengths, every
  worker's hash and active list, every running job's hash and cancel
  flag): the client's queue() SCANs for active lists and workers() and
  running() make one round trip per worker and job;
- which jobs have a cancel asked (HMGET {NS}:cancel);
- a dead letter's exact bytes, so a retry can check it is still the
  entry the page listed (see retry_dead);
- the newest `stats` and the `started` event of a running job, read back
  from its stream (live.Hub), and {NS}:events (pub/sub) between snapshots.

Every list is read with a range (LRANGE/ZRANGE with bounds), never KEYS
or SCAN: the dashboard costs the same with ten jobs or a million.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
from typing import Any, AsyncIterator, Optional

import msgpack
import redis.asyncio as aioredis

from .. import AsyncClient, DebateError, JobNotFound

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

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.r: aioredis.Redis = client.redis
        self.ns = client.namespace

    def key(self, *parts: str) -> str:
        return ":".join([f"{{{self.ns}}}", *parts])

    # ---------------------------------------------------------------- reads

    async def counts_and_lists(self, queued_count: int, results_count: int) -> dict[str, Any]:
        """The fleet in one round trip, then one for the workers, one for their jobs."""
        p = self.r.pipeline(transaction=False)
        p.llen(self.key("queue"))
        p.zcard(self.key("delayed"))
        p.llen(self.key("dead"))
        p.zrange(self.key("workers"), 0, 999, withscores=True)
        p.lrange(self.key("queue"), -queued_count, -1)
        p.lrange(self.key("results"), 0, results_count - 1)
        p.hlen(self.key("cancel"))
        p.llen(self.key("results"))
        nq, nd, ndead, wz, qraw, rraw, ncancel, nres = await p.execute()
        ids = [text(w) for w, _ in wz]
        p = self.r.pipeline(transaction=False)
        for w in ids:
            p.hgetall(self.key("worker", w))
            p.lrange(self.key("active", w), 0, 255)
        got = await p.execute() if ids else []
        workers, running = [], []
        now, ttl = time.time(), self.client.limits.heartbeat_ttl
        for i, (w, score) in enumerate(wz):
            h = text(got[2 * i])
            wid = ids[i]
            conc = int(num(h.get("concurrency")) or 0)
            nrun = int(num(h.get("running")) or 0)
            workers.append({
                "id": wid, "host": h.get("host", ""), "pid": h.get("pid", ""),
                "version": h.get("version", ""), "started_at": num(h.get("started_at")),
                # Liveness is the score (the last beat); the record is written only when it changes.
                "beat": score, "concurrency": conc, "running": nrun,
                "free": max(conc - nrun, 0), "lost": not h or now - score > ttl,
                "jobs": [j for j in str(h.get("jobs", "")).split(",") if j],
            })
            for raw in got[2 * i + 1]:
                job = unpack(raw)
                if isinstance(job, dict) and isinstance(job.get("id"), str) and ID_RE.match(job["id"]):
                    running.append({"id": job["id"], "worker": wid, "payload": job})
        queued = [self._queued_entry(x) for x in reversed(qraw)]
        asking = [j["id"] for j in running] + [q["id"] for q in queued if q["id"]]
        undated = [q for q in queued if q["id"] and q["enqueued_at"] is None]
        p = self.r.pipeline(transaction=False)
        for j in running:
            p.hgetall(self.key("job", j["id"]))
        for q in undated:       # a producer may put enqueued_at in the job hash only (PROTOCOL's example)
            p.hget(self.key("job", q["id"]), "enqueued_at")
        if asking and ncancel:
            p.hmget(self.key("cancel"), asking)
        got = await p.execute() if running or undated or (asking and ncancel) else []
        for q, at in zip(undated, got[len(running):len(running) + len(undated)]):
            q["enqueued_at"] = num(at)
        asked = dict(zip(asking, got[len(running) + len(undated)])) if asking and ncancel else {}
        for j, h in zip(running, got[: len(running)]):
            h = text(h)
            pl = j.pop("payload")
            j.update({
                "state": h.get("state", "queued"), "attempt": int(num(h.get("attempt")) or 0),
                "phase": h.get("phase", ""), "started_at": num(h.get("started_at")),
                "timeout": num(pl.get("timeout")), "warning": num(pl.get("warning")),
                "profile": text(pl.get("profile", "")), "cancel": asked.get(j["id"]) is not None,
            })
        for q in queued:
            q["cancel"] = asked.get(q["id"]) is not None
        return {
            "counts": {"queued": nq, "delayed": nd, "dead": ndead, "workers": len(ids), "results": nres,
                       "running": len(running),
                       "slots": sum(w["concurrency"] for w in workers if not w["lost"]),
                       "free": sum(w["free"] for w in workers if not w["lost"])},
            "workers": workers, "running": running, "queued": queued,
            "results": [self._result_row(unpack(x)) for x in rraw],
        }

    def _queued_entry(self, raw: bytes) -> dict[str, Any]:
        job = unpack(raw)
        jid = job.get("id") if isinstance(job, dict) else None
        ok = isinstance(jid, str) and bool(ID_RE.match(jid))
        return {"id": jid if ok else "", "profile": text(job.get("profile", "")) if isinstance(job, dict) else "",
                "enqueued_at": num(job.get("enqueued_at")) if isinstance(job, dict) else None,
                "bad": "" if ok else (f"unreadable payload ({len(raw)} bytes)" if not isinstance(job, dict)
                                      else "no valid id")}

    @staticmethod
    def _result_row(res: Any) -> dict[str, Any]:
        if not isinstance(res, dict):
            return {"id": "", "status": "error", "error": "unreadable result"}
        return {k: text(res.get(k)) for k in ("id", "status", "exit_code", "duration", "started_at",
                                               "finished_at", "worker", "attempt", "error")}

    async def queued(self, start: int, count: int) -> dict[str, Any]:
        """A page of the queue, the next to run first."""
        total = await self.r.llen(self.key("queue"))
        items = [{"id": q.id if q.id and ID_RE.match(q.id) else "", "profile": q.profile or "",
                  "enqueued_at": q.enqueued_at, "bad": "" if q.id else f"unreadable payload ({q.size} bytes)",
                  "cancel": False}
                 for q in await self.client.queued(start, count)]
        ids = [q["id"] for q in items if q["id"]]
        if ids:
            p = self.r.pipeline(transaction=False)
            for i in ids:
                p.hget(self.key("job", i), "enqueued_at")
            p.hmget(self.key("cancel"), ids)
            got = await p.execute()
            at = dict(zip(ids, got[:-1]))
            asked = dict(zip(ids, got[-1]))
            for q in items:
                if q["id"]:
                    q["enqueued_at"] = q["enqueued_at"] or num(at.get(q["id"]))
                    q["cancel"] = asked.get(q["id"]) is not None
        return {"total": total, "start": start, "items": items}

    async def results(self, start: int, count: int) -> dict[str, Any]:
        """A page of recent results, the newest first."""
        total = await self.r.llen(self.key("results"))
        items = [{"id": x.id, "status": str(x.status) if x.status else "error", "exit_code": x.exit_code,
                  "duration": x.duration, "started_at": x.started_at, "finished_at": x.finished_at,
                  "worker": x.worker, "attempt": x.attempt, "error": x.error}
                 for x in await self.client.recent_results(start, count)]
        return {"total": total, "start": start, "items": items}

    async def dead(self, start: int, count: int) -> dict[str, Any]:
        """A page of dead letters, the newest first, each with the digest that names it for a retry."""
        total = await self.r.llen(self.key("dead"))
        items = []
        for d in await self.client.dead(start, count):
            pj = unpack(d.payload) if d.payload is not None else None
            items.append({
                "index": d.index, "digest": hashlib.sha256(d.entry).hexdigest(),
                "reason": d.reason, "error": d.error, "id": d.id or "", "worker": d.worker or "",
                "ts": d.ts, "size": len(d.payload) if d.payload is not None else 0,
                "profile": text(pj.get("profile", "")) if isinstance(pj, dict) else "",
                "retryable": d.payload is not None,
            })
        return {"total": total, "start": start, "items": items}

    async def job(self, job_id: str) -> dict[str, Any]:
        """The job hash and, when it finished, its result (hash None: no such job)."""
        try:
            st = await self.client.status(job_id)
        except JobNotFound:
            return {"id": job_id, "hash": None, "result": None, "cancel": False}
        asked = await self.r.hexists(self.key("cancel"), job_id)
        res = st.result.raw if st.result is not None else None
        return {"id": job_id, "hash": st.fields, "result": text(res), "cancel": bool(asked)}

    async def events(self, job_id: str, after_seq: int = 0) -> AsyncIterator[dict[str, Any]]:
        """The job's events after seq after_seq (AsyncClient.events: replay, then follow).

        The client reconnects by itself while Redis is away and resumes
        after the last entry it read, so nothing is lost or repeated.  A
        job that does not exist (yet) is asked for again every 2 s.
        """
        while True:
            try:
                async for ev in self.client.events(job_id, since_seq=after_seq):
                    after_seq = max(after_seq, ev.seq)
                    yield text(ev.to_dict())
                return
            except JobNotFound:
                await asyncio.sleep(2.0)

    # ---------------------------------------------------------------- writes

    async def cancel(self, job_id: str) -> tuple[int, str]:
        """Ask for a cancel (AsyncClient.cancel); (HTTP status, message)."""
        if await self.client.cancel(job_id):
            return 200, f"cancel asked for {job_id}"
        return 409, f"{job_id} has already ended"

    async def retry_dead(self, index: int, digest: str) -> tuple[int, str]:
        """Requeue the dead letter at index if it is still the one the page listed.

        The page sends the sha256 of the entry it showed: an index alone
        names another entry once a worker pushed a new dead letter.  The
        client then removes the entry by value and pushes its payload in
        one script, so a double click queues it once.  (Between our check
        and the client's own LINDEX a new letter could still slip in; a
        retry_dead that takes the entry's bytes would close that window.)
        """
        raw = await self.r.lindex(self.key("dead"), index)
        if raw is None or hashlib.sha256(raw).hexdigest() != digest:
            return 409, "that dead letter moved or is gone: reload the list"
        try:
            job = await self.client.retry_dead(index)
        except DebateError as e:
            return 409, str(e)
        return 200, f"requeued {job.id or 'the payload'}"
