"""Live data: one shared fleet snapshot, and one multiplexed SSE stream per tab.

The hub is shared by every viewer of one app: one task builds a snapshot
of the fleet every `interval` seconds and hands the same dict to every
connected tab, and one task listens to `{NS}:events` (every event but log
lines, PROTOCOL: Events) to keep the newest stats, phase and warning of
each running build between snapshots.  Both start with the first viewer
and stop a while after the last one leaves, so a mounted app needs no
lifespan hook.

Each tab opens one EventSource.  It carries `fleet` (the snapshot), `job`
(events of the jobs the tab watches, read from their `{NS}:log:<id>`
streams) and `status` (Redis up or down).  The id of each `job` message
lists every watched job's last seq (`ID:SEQ,ID:SEQ`), so the browser's
Last-Event-ID resumes each stream exactly where the tab was: on any
Redis error the server ends the response and the browser comes back with
that id, after `retry` ms.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, AsyncIterator, Optional

from .source import ID_RE, Source, text, unpack

log = logging.getLogger("debate_queue.dashboard")

QUEUED_ROWS = 20
RESULT_ROWS = 25
MAX_JOBS_PER_TAB = 8
RETRY_MS = 1000
STREAM_LIFE = 300.0     # seconds; then the browser reconnects (resuming), so no response lives forever


def jdump(v: Any) -> str:
    """JSON for one SSE data line (json.dumps escapes every newline)."""
    return json.dumps(v, separators=(",", ":"), default=lambda o: text(o) if isinstance(o, bytes) else str(o))


class Viewer:
    """One tab: a queue the hub and the tab's job readers put into."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.fleet_pending = False


class Hub:
    """The shared snapshot of one namespace and its viewers."""

    def __init__(self, source: Source, interval: float = 2.0, idle: float = 30.0) -> None:
        self.src = source
        self.interval = interval
        self.idle = idle
        self.viewers: set[Viewer] = set()
        self.snapshot: Optional[dict[str, Any]] = None
        self.redis_up = True
        self.redis_error = ""
        self.down_since: Optional[float] = None
        self.live: dict[str, dict[str, Any]] = {}     # job id -> started/stats/warning state
        self.seeded: set[tuple[str, int]] = set()     # (id, attempt) read back from the stream
        self.ready = asyncio.Event()
        self.task: Optional[asyncio.Task[None]] = None
        self.sub: Optional[asyncio.Task[None]] = None
        self.last_seen = time.monotonic()
        self.closing = False
        self.builds = 0          # snapshots built, for the tests and the report
        self.build_time = 0.0    # seconds the last one took

    # ------------------------------------------------------------ lifecycle

    def ensure(self) -> None:
        """Start the shared tasks if they are not running."""
        self.last_seen = time.monotonic()
        if self.task is None or self.task.done():
            self.ready.clear()
            self.task = asyncio.ensure_future(self._run())
        if self.sub is None or self.sub.done():
            self.sub = asyncio.ensure_future(self._listen())

    def join(self) -> Viewer:
        v = Viewer()
        self.viewers.add(v)
        self.ensure()
        return v

    def leave(self, v: Viewer) -> None:
        self.viewers.discard(v)
        self.last_seen = time.monotonic()

    async def current(self, timeout: float = 10.0) -> Optional[dict[str, Any]]:
        """The latest snapshot, building the first one if need be."""
        self.ensure()
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        return self.snapshot

    def shutdown(self) -> None:
        """End every tab's stream now (the server is stopping; it would wait for them)."""
        self.closing = True
        for v in list(self.viewers):
            v.q.put_nowait(("close", None))

    async def close(self) -> None:
        self.shutdown()
        for t in (self.task, self.sub):
            if t is not None:
                t.cancel()
        for t in (self.task, self.sub):
            if t is not None:
                try:
                    await t
                except BaseException:
                    pass

    # ------------------------------------------------------------ snapshot

    async def _run(self) -> None:
        """Build a snapshot every interval while anyone watches."""
        try:
            while True:
                t0 = time.monotonic()
                await self._build()
                self.ready.set()
                for v in list(self.viewers):
                    if not v.fleet_pending:
                        v.fleet_pending = True
                        v.q.put_nowait(("fleet", None))
                if not self.viewers and time.monotonic() - self.last_seen > self.idle:
                    return
                await asyncio.sleep(max(0.2, self.interval - (time.monotonic() - t0)))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("fleet snapshot task failed")
            raise

    async def _build(self) -> None:
        t0 = time.monotonic()
        try:
            snap = await asyncio.wait_for(self.src.counts_and_lists(QUEUED_ROWS, RESULT_ROWS), 10)
            await self._seed(snap["running"])
        except Exception as e:   # Redis away: keep the last numbers, say they are stale
            self._down(e)
            if self.snapshot is not None:
                self.snapshot = dict(self.snapshot, redis="down", error=self.redis_error,
                                     down_since=self.down_since, ts=time.time())
            else:
                self.snapshot = {"ts": time.time(), "ns": self.src.ns, "redis": "down",
                                 "error": self.redis_error, "down_since": self.down_since,
                                 "counts": {}, "workers": [], "running": [], "queued": [],
                                 "results": []}
            return
        self._up()
        running_ids = {j["id"] for j in snap["running"]}
        for jid in list(self.live):
            if jid not in running_ids:
                del self.live[jid]
        self.seeded = {k for k in self.seeded if k[0] in running_ids}
        for j in snap["running"]:
            j.update(self._live_fields(j))
        # The build closest to its timeout first: what an operator looks at.
        now = time.time()
        snap["running"].sort(key=lambda j: (-((now - (j.get("started_at") or now)) / (j.get("timeout") or 1e9)),
                                            j["id"]))
        self.builds += 1
        snap.update(ts=time.time(), ns=self.src.ns, redis="up", error="", down_since=None, seq=self.builds)
        self.snapshot = snap
        self.build_time = time.monotonic() - t0

    def _down(self, e: Exception) -> None:
        if self.redis_up:
            log.warning("redis unreachable: %s", e)
            self.down_since = time.time()
        self.redis_up = False
        self.redis_error = f"{type(e).__name__}: {e}"
        # Pub/sub messages sent while we were away are lost: read the
        # streams again for every running job once Redis is back.
        self.seeded.clear()

    def _up(self) -> None:
        if not self.redis_up:
            log.warning("redis reachable again")
        self.redis_up = True
        self.redis_error = ""
        self.down_since = None

    def _live_fields(self, j: dict[str, Any]) -> dict[str, Any]:
        st = self.live.get(j["id"], {})
        started = st.get("started") or {}
        limits = started.get("limits") or {}
        stats = st.get("stats") or {}
        prev = st.get("prev_stats") or {}
        cpu_pct = None
        if stats and prev and (stats.get("elapsed") or 0) > (prev.get("elapsed") or 0):
            cpu_pct = 100.0 * ((stats.get("cpu") or 0) - (prev.get("cpu") or 0)) / (
                stats["elapsed"] - prev["elapsed"])
        return {
            "timeout": limits.get("timeout", j.get("timeout")),
            "warning": limits.get("warning", j.get("warning")),
            "memory_limit": limits.get("memory"), "cpus": limits.get("cpus"),
            "started_at": j.get("started_at") or started.get("ts"),
            "memory": stats.get("memory"), "cpu": stats.get("cpu"), "cpu_pct": cpu_pct,
            "stats_elapsed": stats.get("elapsed"),
            "warned": (st.get("warning") or {}).get("attempt") == j.get("attempt"),
            "phase": j.get("phase") or st.get("phase", ""),
        }

    async def _seed(self, running: list[dict[str, Any]]) -> None:
        """Read the newest events of running jobs the pub/sub listener has not seen yet.

        Bounded: the last 64 stream entries, and the first 8 for a
        `started` event a long log pushed back.  Only once per attempt.
        """
        todo = [j for j in running if j["state"] == "running" and (j["id"], j["attempt"]) not in self.seeded]
        if not todo:
            return
        p = self.src.r.pipeline(transaction=False)
        for j in todo:
            p.xrevrange(self.src.key("log", j["id"]), count=64)
            p.xrange(self.src.key("log", j["id"]), count=8)
        got = await p.execute()
        for i, j in enumerate(todo):
            evs = []
            for _sid, f in reversed(got[2 * i]):
                ev = unpack(f.get(b"event", b""))
                if isinstance(ev, dict):
                    evs.append(text(ev))
            head = [text(unpack(f.get(b"event", b""))) for _sid, f in got[2 * i + 1]]
            st = self.live.setdefault(j["id"], {})
            for ev in [e for e in head if isinstance(e, dict)] + evs:
                if ev.get("attempt") == j["attempt"] or ev.get("type") != "started":
                    self._apply(j["id"], ev, st)
            self.seeded.add((j["id"], j["attempt"]))

    def _apply(self, jid: str, ev: dict[str, Any], st: Optional[dict[str, Any]] = None) -> None:
        st = self.live.setdefault(jid, {}) if st is None else st
        t = ev.get("type")
        att = ev.get("attempt")
        if t == "started":
            if st.get("attempt") != att:
                st.clear()
            st.update(started=ev, attempt=att)
        elif t == "stats":
            if st.get("stats") is not ev and (st.get("stats") or {}).get("seq", 0) < ev.get("seq", 0):
                st["prev_stats"] = st.get("stats")
                st["stats"] = ev
        elif t == "warning":
            st["warning"] = ev
        elif t == "phase":
            st["phase"] = ev.get("name", "")

    async def _listen(self) -> None:
        """Follow {NS}:events for stats/phase/warning between snapshots; reconnect with backoff."""
        delay = 0.5
        while True:
            ps = self.src.r.pubsub()
            try:
                await ps.subscribe(self.src.key("events"))
                delay = 0.5
                while True:
                    if not self.viewers and time.monotonic() - self.last_seen > self.idle:
                        return
                    m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if m is None or m.get("type") != "message":
                        continue
                    ev = unpack(m["data"])
                    if isinstance(ev, dict) and isinstance(ev.get("id"), (str, bytes)):
                        ev = text(ev)
                        self._apply(ev["id"], ev)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.debug("events subscription lost: %s", e)
                self.seeded.clear()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                try:
                    await ps.reset()
                except Exception:
                    pass


def parse_positions(last_event_id: str, jobs: list[str]) -> dict[str, int]:
    """`ID:SEQ,ID:SEQ` -> {id: seq} for the watched jobs; anything malformed is ignored."""
    pos = {j: 0 for j in jobs}
    for part in (last_event_id or "").split(","):
        jid, _, seq = part.strip().rpartition(":")
        if jid in pos and seq.isdigit():
            pos[jid] = int(seq)
    return pos


async def stream(hub: Hub, jobs: list[str], last_event_id: str, hello: dict[str, Any]) -> AsyncIterator[str]:
    """The SSE body of one tab."""
    v = hub.join()
    pos = parse_positions(last_event_id, jobs)
    readers: list[asyncio.Task[None]] = []

    async def read(jid: str) -> None:
        try:
            async for ev in hub.src.events(jid, pos[jid]):
                while v.q.qsize() > 1000:       # a slow tab slows its own reader only
                    await asyncio.sleep(0.05)
                v.q.put_nowait(("job", ev))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            v.q.put_nowait(("down", f"{type(e).__name__}: {e}"))

    try:
        yield f"retry: {RETRY_MS}\n\n"
        yield f"event: hello\ndata: {jdump(hello)}\n\n"
        for jid in jobs:
            readers.append(asyncio.ensure_future(read(jid)))
        if hub.snapshot is not None:
            v.fleet_pending = True
            v.q.put_nowait(("fleet", None))
        end = time.monotonic() + STREAM_LIFE
        while not hub.closing:
            left = end - time.monotonic()
            if left <= 0:
                return
            try:
                kind, item = await asyncio.wait_for(v.q.get(), min(15.0, left))
            except asyncio.TimeoutError:
                yield ": keepalive\n\n"
                continue
            if kind == "close":
                return
            if kind == "fleet":
                v.fleet_pending = False
                snap = hub.snapshot
                if snap is not None:
                    yield f"event: fleet\ndata: {jdump(snap)}\n\n"
            elif kind == "job":
                jid = item.get("id")
                if jid in pos and isinstance(item.get("seq"), int):
                    pos[jid] = max(pos[jid], item["seq"])
                ident = ",".join(f"{j}:{s}" for j, s in pos.items())
                yield f"id: {ident}\nevent: job\ndata: {jdump(item)}\n\n"
            elif kind == "down":
                # End the response: the browser reconnects after `retry` ms
                # with the Last-Event-ID above, and we resume from there.
                yield f"event: status\ndata: {jdump({'redis': 'down', 'error': item})}\n\n"
                return
    finally:
        for t in readers:
            t.cancel()
        hub.leave(v)


def valid_jobs(values: list[str]) -> list[str]:
    """The job ids a tab may watch: valid ids, no duplicates, at most MAX_JOBS_PER_TAB."""
    out: list[str] = []
    for v in values:
        if ID_RE.match(v) and v not in out:
            out.append(v)
    return out[:MAX_JOBS_PER_TAB]
