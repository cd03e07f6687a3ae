"""AsyncClient: Client's methods on redis.asyncio (redis-py 4.3).

    from debate_queue import AsyncClient
    c = AsyncClient("redis://localhost:6379/0")
    job = await c.submit("profiles/releng", "out/42")
    async for ev in c.events(job.id):
        ...
    res = await c.result(job.id, timeout=3600)

Cancelling: some redis-py 4.x releases (CVE-2023-28858, CVE-2023-28859)
put a connection whose command was cancelled back
into the pool with its reply still on the way, so the next command on it
read that reply as its own.  Debian's 4.3.4 closes such a connection on
its read path itself; this client does not rely on that: _SafeRedis closes
it at once, whatever redis-py is installed, and each blocking read
(result(), events()) runs on a connection of its own that is closed when
the read ends, however it ends.  A cancelled follower leaves the client's
pool clean, and it does stop: see _OWN_TIMEOUT for the cancel that
Python 3.11's wait_for() inside redis-py could lose.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, AsyncIterator, List, Mapping, Optional, Union

import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _common as C
from .client import _event
from .errors import DeadLetterError, EventsTimeout, JobDead, JobNotFound, ResultTimeout
from .keys import Keys
from .pack import pack_profile_dir
from .types import (DeadLetter, Event, Job, JobStatus, QueuedJob, QueueInfo, Result, WorkerInfo,
                    _s)
from .validate import Limits, build_payload, payload_id

__all__ = ["AsyncClient"]

_LOST = (RedisConnectionError, RedisTimeoutError, OSError, asyncio.TimeoutError)


def _abandon(conn: Any) -> None:
    """Close a connection now, without awaiting anything: after a cancelled
    command its reply may still arrive, so it must never serve another."""
    writer = getattr(conn, "_writer", None)
    try:
        conn._parser.on_disconnect()
    except Exception:
        pass
    if writer is not None:
        try:
            writer.close()
        except Exception:
            pass
    conn._reader = None
    conn._writer = None


# Python 3.11's asyncio.wait_for(), which redis-py wraps around every send
# when the connection has a socket timeout, returns the inner result when
# a cancel lands just as the send completes: the CancelledError is lost,
# and a cancelled follower would go on following forever (this happened
# in tests/python/test_aio.py).  So on 3.11 and later the connections get
# no socket timeout, and each command runs inside asyncio.timeout()
# instead, which neither loses a cancel nor mistakes one for its own.
# That is done for the blocking reads (result(), events()), which spend
# their time in commands; the client's shared pool keeps redis-py's socket
# timeout, so a cancel landing on one of its short commands may still be
# lost by redis-py (the method then returns normally).
_OWN_TIMEOUT = hasattr(asyncio, "timeout")


class _SafeRedis(aredis.Redis):
    """redis.asyncio.Redis whose interrupted commands (a cancelled task, a
    timeout) close their connection instead of pooling it with a reply
    pending, and which times each command out itself (``command_timeout``,
    see _OWN_TIMEOUT)."""

    command_timeout: Optional[float] = None

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if self.command_timeout is None:
            return await self._guarded(*args, **options)
        async with asyncio.timeout(self.command_timeout):  # type: ignore[attr-defined]
            return await self._guarded(*args, **options)

    async def _guarded(self, *args: Any, **options: Any) -> Any:
        await self.initialize()
        pool = self.connection_pool
        conn = self.connection or await pool.get_connection(args[0], **options)
        try:
            return await conn.retry.call_with_retry(
                lambda: self._send_command_parse_response(conn, args[0], *args, **options),
                lambda error: self._disconnect_raise(conn, error))
        except Exception:
            raise
        except BaseException:          # asyncio.CancelledError, KeyboardInterrupt
            _abandon(conn)
            raise
        finally:
            if not self.connection:
                await pool.release(conn)


def _safe(pool: aredis.ConnectionPool, timeout: Optional[float], **kw: Any) -> _SafeRedis:
    """A _SafeRedis on pool whose commands time out after timeout seconds."""
    r = _SafeRedis(connection_pool=pool, **kw)
    r.command_timeout = timeout if _OWN_TIMEOUT else None
    return r


def _pool_kwargs(kw: dict, socket_timeout: Optional[float]) -> dict:  # type: ignore[type-arg]
    """Connection options with the socket timeout left to asyncio.timeout()."""
    kw = dict(kw)
    kw["socket_timeout"] = None if _OWN_TIMEOUT else socket_timeout
    kw.setdefault("socket_connect_timeout", 10.0)
    return kw


class AsyncClient:
    """Client (client.py) on asyncio: the same methods, awaited; events()
    is an async iterator.  See Client for what each method does."""

    def __init__(self, url: str = "redis://localhost:6379/0", namespace: str = "debate", *,
                 limits: Optional[Limits] = None, socket_timeout: float = 30.0,
                 redis: Optional[aredis.Redis] = None) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.limits = limits or Limits()
        # The shared pool keeps its socket timeout: pipelines and pub/sub on
        # it (the dashboard's) need one.  Its commands are short; the long,
        # blocking reads run on connections of their own (_blocking()).
        self.redis: aredis.Redis = redis if redis is not None else _SafeRedis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout, 10.0))

    # ------------------------------------------------------------ plumbing

    async def close(self) -> None:
        """Close the pooled connections."""
        await self.redis.connection_pool.disconnect()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _blocking(self) -> aredis.Redis:
        """A client on one connection of its own, for a blocking read."""
        pool = self.redis.connection_pool
        kw = _pool_kwargs(pool.connection_kwargs, C.BLOCK_SOCKET_TIMEOUT)
        kw["client_name"] = C.FOLLOW_CLIENT_NAME   # CLIENT LIST tells followers apart
        own = aredis.ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kw)
        return _safe(own, C.BLOCK_SOCKET_TIMEOUT, single_connection_client=True)

    @staticmethod
    async def _drop(r: Optional[aredis.Redis]) -> None:
        """Close a blocking client: its connection at once (a cancelled
        read may have left a reply on the way), then its pool."""
        if r is None:
            return
        conn, r.connection = r.connection, None
        if conn is not None:
            _abandon(conn)
        try:
            await r.connection_pool.disconnect()
        except Exception:
            pass

    async def _run(self, script: C.Script, keys: List[str], args: List[Any]) -> Any:
        """EVALSHA, or EVAL when the server does not have the script."""
        try:
            return await self.redis.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.redis.eval(script.source, len(keys), *keys, *args)

    # ------------------------------------------------------------ producing

    async def submit(self, profile: Any = None, output: Any = None, *, id: Optional[str] = None,
                     memory: Union[int, str, None] = None, cpus: Optional[float] = None,
                     timeout: Optional[float] = None, warning: Optional[float] = None,
                     image: Optional[str] = None, retries: int = 0,
                     meta: Optional[Mapping[str, Any]] = None,
                     source_date_epoch: Optional[int] = None, rerun: bool = False,
                     profile_dir: Union[str, "os.PathLike[str]", None] = None,
                     profile_archive: Optional[bytes] = None, upload: Optional[str] = None,
                     upload_headers: Optional[Mapping[str, str]] = None) -> Job:
        """Queue a build job (see Client.submit); profile_dir is packed in a thread."""
        if profile_dir is not None and profile is None and profile_archive is None:
            profile_archive = await asyncio.to_thread(pack_profile_dir, profile_dir)
            profile_dir = None
        now = time.time()
        job_id, payload = build_payload(
            profile, output, id=id, memory=memory, cpus=cpus, timeout=timeout, warning=warning,
            image=image, retries=retries, meta=meta, source_date_epoch=source_date_epoch,
            enqueued_at=now, profile_dir=profile_dir, profile_archive=profile_archive,
            upload=upload, upload_headers=upload_headers, limits=self.limits)
        k = self.keys
        reply = await self._run(C.SUBMIT, [k.job(job_id), k.queue, k.result(job_id), k.log(job_id)],
                                [payload, C.enqueued_at_arg(now), "rerun" if rerun else "new"])
        digest = C.submit_reply(job_id, reply)
        return Job(id=job_id, client=self, digest=digest, payload=payload)

    async def cancel(self, job_id: str) -> bool:
        """Ask the workers to cancel a job; False when it already ended."""
        reply = await self._run(C.CANCEL, [self.keys.job(job_id), self.keys.cancel],
                                [job_id, "%.3f" % time.time()])
        return bool(int(reply[0]))

    async def retry_dead(self, index: int) -> Job:
        """Put dead letter ``index`` back on the queue (see Client.retry_dead)."""
        raw = await self.redis.lindex(self.keys.dead, index)
        if raw is None:
            raise DeadLetterError(index, "gone", f"no dead letter at index {index}")
        d = DeadLetter.from_bytes(index, raw)
        if d.payload is None:
            raise DeadLetterError(index, "no_payload", f"dead letter {index} has no payload; left alone")
        k = self.keys
        keys = [k.dead, k.queue] + ([k.job(d.id), k.result(d.id), k.log(d.id)] if d.id else [])
        reply = await self._run(C.RETRY_DEAD, keys,
                                [raw, d.payload, C.enqueued_at_arg(time.time()), d.error])
        digest = C.retry_dead_reply(index, d.id, reply)
        return Job(id=d.id or "", client=self, digest=digest, payload=d.payload)

    # ------------------------------------------------------------ reading

    async def status(self, job_id: str) -> JobStatus:
        """The job hash and its result when there is one (JobNotFound: neither)."""
        h = await self.redis.hgetall(self.keys.job(job_id))
        raw = await self.redis.lindex(self.keys.result(job_id), 0)
        if not h and raw is None:
            raise JobNotFound(job_id)
        return JobStatus.from_hash(job_id, h, Result.from_bytes(raw) if raw is not None else None)

    async def queue(self) -> QueueInfo:
        """The lengths of the queue, each active list, delayed and dead."""
        r, k = self.redis, self.keys
        pattern = C.glob_escape(k.active("")) + "*"
        names = sorted({_s(n) async for n in r.scan_iter(match=pattern, count=1000)})
        active = {n[len(k.active("")):]: int(await r.llen(n)) for n in names}
        return QueueInfo(queued=int(await r.llen(k.queue)), active=active,
                         delayed=int(await r.zcard(k.delayed)), dead=int(await r.llen(k.dead)))

    async def workers(self) -> List[WorkerInfo]:
        """Every worker of {ns}:workers with its heartbeat (lost ones too)."""
        r = self.redis
        out = []
        for wid, score in await r.zrange(self.keys.workers, 0, -1, withscores=True):
            w = _s(wid)
            out.append(WorkerInfo.from_hash(w, float(score), await r.hgetall(self.keys.worker(w)),
                                        self.limits.heartbeat_ttl))
        return out

    async def dead(self, start: int = 0, count: int = 50) -> List[DeadLetter]:
        """Dead letters, newest first; index as retry_dead() takes it."""
        raws = await self.redis.lrange(self.keys.dead, start, start + count - 1) if count > 0 else []
        return [DeadLetter.from_bytes(start + i, raw) for i, raw in enumerate(raws)]

    async def recent_results(self, start: int = 0, count: int = 50) -> List[Result]:
        """Results of {ns}:results, newest first (unreadable ones left out)."""
        raws = await self.redis.lrange(self.keys.results, start, start + count - 1) if count > 0 else []
        out = []
        for raw in raws:
            try:
                out.append(Result.from_bytes(raw))
            except Exception:
                continue
        return out

    async def queued(self, start: int = 0, count: int = 50) -> List[QueuedJob]:
        """Queued payloads, the next one to be taken first (position 0)."""
        if count <= 0:
            return []
        raws = await self.redis.lrange(self.keys.queue, -(start + count), -(start + 1))
        out = []
        for i, raw in enumerate(reversed(raws)):
            jid, at, prof = C.payload_summary(raw)
            out.append(QueuedJob(position=start + i, id=jid, enqueued_at=at, size=len(raw), profile=prof))
        return out

    async def running(self) -> List[JobStatus]:
        """The jobs in the live workers' active lists, with their job hash."""
        r, k = self.redis, self.keys
        out = []
        for wid in await r.zrange(k.workers, 0, -1):
            w = _s(wid)
            if not await r.exists(k.worker(w)):
                continue
            for raw in await r.lrange(k.active(w), 0, -1):
                jid = payload_id(raw)
                if jid is None:
                    continue
                h = await r.hgetall(k.job(jid))
                if h:
                    out.append(JobStatus.from_hash(jid, h))
        return out

    # ------------------------------------------------------------ waiting

    async def result(self, job_id: str, timeout: float = 600.0) -> Result:
        """Wait at most timeout seconds for the result (see Client.result)."""
        deadline = time.monotonic() + timeout
        backoff = C.Backoff(deadline)
        conn: Optional[aredis.Redis] = None
        last: Optional[str] = None
        check = True
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._blocking()
                    if last is None:
                        top = await conn.xrevrange(self.keys.log(job_id), "+", "-", count=1)
                        last = _s(top[0][0]) if top else "0-0"
                        check = True
                    if check:
                        res = await self._check_result(conn, job_id)
                        if res is not None:
                            return res
                    left = C.remaining(deadline) or 0.0
                    if left <= 0:
                        raise ResultTimeout(job_id, timeout)
                    block = max(1, min(C.BLOCK_MS, int(left * 1000)))
                    got = C.xread_entries(await conn.xread({self.keys.log(job_id): last},
                                                           count=C.REPLAY_COUNT, block=block))
                    backoff.reset()
                    check = not got or any(f.get(b"type") in (b"finished", b"dead") for _, f in got)
                    if got:
                        last = got[-1][0]
                except _LOST:
                    await self._drop(conn)
                    conn = None
                    delay = backoff.next()
                    if delay is None:
                        raise ResultTimeout(job_id, timeout) from None
                    await asyncio.sleep(delay)
                    check = True
        finally:
            await self._drop(conn)

    async def _check_result(self, r: aredis.Redis, job_id: str) -> Optional[Result]:
        """The result if it is there; raise when none will ever come."""
        raw = await r.lindex(self.keys.result(job_id), 0)
        if raw is not None:
            return Result.from_bytes(raw)
        st, err = C.state_of(await r.hmget(self.keys.job(job_id), "state", "error"))
        if C.is_dead(st):
            raise JobDead(job_id, err)
        if C.is_final(st):
            raw = await r.lindex(self.keys.result(job_id), 0)
            if raw is not None:
                return Result.from_bytes(raw)
            raise JobNotFound(job_id)
        return None

    async def events(self, job_id: str, since_seq: int = 0, *,
                     timeout: Optional[float] = None) -> AsyncIterator[Event]:
        """The job's events with seq > since_seq, replayed then followed
        (see Client.events).  Cancelling the task that iterates closes the
        follower's own connection; use contextlib.aclosing() to close it
        at once when you stop iterating early."""
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = C.Backoff(deadline)
        log, job = self.keys.log(job_id), self.keys.job(job_id)
        conn: Optional[aredis.Redis] = None
        last_id, last_seq = "0-0", since_seq
        ending = after_final = False
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._blocking()
                    left = C.remaining(deadline)
                    if left is not None and left <= 0 and not (ending or after_final):
                        raise EventsTimeout(job_id, timeout or 0.0)
                    block = None if ending else max(1, min(C.BLOCK_MS, int((left if left is not None
                                                                             else 3600) * 1000)))
                    got = C.xread_entries(await conn.xread({log: last_id}, count=C.REPLAY_COUNT,
                                                      block=None if ending or after_final else block))
                    backoff.reset()
                    for sid, fields in got:
                        last_id = sid
                        ev = _event(fields, sid)
                        if ev is None:
                            continue
                        after_final = ev.final
                        if ev.seq <= last_seq:
                            continue
                        last_seq = ev.seq
                        yield ev
                    if got:
                        continue
                    state = _s(await conn.hget(job, "state")) or None
                    if ending or after_final:
                        # Nothing after the last event: the end, unless the
                        # job was queued again under its id (a rerun).
                        if state not in ("queued", "running"):
                            return
                        ending = after_final = False
                        continue
                    # A quiet block: did the job end without an event we can
                    # see?  Its final state and its last event are written
                    # together, so one more read after seeing it gets that event.
                    ending = C.is_final(state)
                except _LOST:
                    await self._drop(conn)
                    conn = None
                    delay = backoff.next()
                    if delay is None:
                        raise EventsTimeout(job_id, timeout or 0.0) from None
                    await asyncio.sleep(delay)
        finally:
            await self._drop(conn)
