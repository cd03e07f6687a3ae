"""Client: the contract's producer and reader, synchronous (redis-py 4.3).

    from debate_queue import Client
    c = Client("redis://localhost:6379/0", namespace="debate")
    job = c.submit("profiles/releng", "out/42", memory="4g", cpus=2)
    for ev in job.events():          # replay, then follow; ends after finished/dead
        print(ev.seq, ev.type, ev.lines)
    res = job.result(timeout=3600)   # never waits past its timeout

Blocking reads (result(), events()) use a connection of their own, whose
socket timeout is longer than the block, and survive Redis going away:
they reconnect with backoff inside their deadline.  AsyncClient (aio.py)
has the same methods on redis.asyncio.
"""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

import redis as redis_lib
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import _common as C
from .errors import DeadLetterError, EventsTimeout, JobDead, JobNotFound, ResultTimeout
from .keys import Keys
from .types import (DeadLetter, Event, Job, JobStatus, QueuedJob, QueueInfo, Result, WorkerInfo,
                    _s)
from .validate import Limits, build_payload, payload_id

__all__ = ["Client"]

_LOST = (RedisConnectionError, RedisTimeoutError, OSError)


class _GuardedRedis(redis_lib.Redis):
    """redis.Redis that drops, instead of pooling, a connection whose
    command was interrupted (KeyboardInterrupt, SystemExit): its reply may
    still be on the way and would answer the next command."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        pool = self.connection_pool
        conn = self.connection or pool.get_connection(args[0], **options)
        try:
            return conn.retry.call_with_retry(
                lambda: self._send_command_parse_response(conn, args[0], *args, **options),
                lambda error: self._disconnect_raise(conn, error))
        except Exception:
            raise
        except BaseException:
            conn.disconnect()
            raise
        finally:
            if not self.connection:
                pool.release(conn)


class Client:
    """A producer and reader of one namespace on one Redis.

    url: a redis:// or unix:// URL (or pass a ready ``redis`` client made
    with decode_responses=False).  limits: what the workers' worker.ini
    allows, for checking jobs before they are sent (defaults: worker.ini's).
    """

    def __init__(self, url: str = "redis://localhost:6379/0", namespace: str = "debate", *,
                 limits: Optional[Limits] = None, socket_timeout: float = 30.0,
                 redis: Optional[redis_lib.Redis] = None) -> None:
        self.keys = Keys(namespace)
        self.namespace = namespace
        self.limits = limits or Limits()
        self.redis: redis_lib.Redis = redis if redis is not None else _GuardedRedis.from_url(
            url, socket_timeout=socket_timeout, socket_connect_timeout=min(socket_timeout, 10.0))

    # ------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the pooled connections."""
        self.redis.connection_pool.disconnect()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _blocking(self) -> redis_lib.Redis:
        """A client on one connection of its own, for blocking reads: its
        socket timeout is longer than the block, and nothing else waits
        behind it."""
        pool = self.redis.connection_pool
        kw = dict(pool.connection_kwargs)
        kw["socket_timeout"] = C.BLOCK_SOCKET_TIMEOUT
        kw.setdefault("socket_connect_timeout", 10.0)
        kw["client_name"] = C.FOLLOW_CLIENT_NAME   # CLIENT LIST tells followers apart
        own = redis_lib.ConnectionPool(connection_class=pool.connection_class, max_connections=1, **kw)
        try:
            return _GuardedRedis(connection_pool=own, single_connection_client=True)
        except BaseException:
            own.disconnect()
            raise

    @staticmethod
    def _drop(conn: Optional[redis_lib.Redis]) -> None:
        """Close a blocking client's connection (best effort)."""
        if conn is None:
            return
        try:
            conn.close()
        finally:
            try:
                conn.connection_pool.disconnect()
            except Exception:
                pass

    def _run(self, script: C.Script, keys: List[str], args: List[Any],
             r: Optional[redis_lib.Redis] = None) -> Any:
        """EVALSHA, or EVAL when the server does not have the script."""
        r = r or self.redis
        try:
            return r.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return r.eval(script.source, len(keys), *keys, *args)

    # ------------------------------------------------------------ producing

    def submit(self, profile: Any = None, output: Any = None, *, id: Optional[str] = None,
               memory: Union[int, str, None] = None, cpus: Optional[float] = None,
               timeout: Optional[float] = None, warning: Optional[float] = None,
               image: Optional[str] = None, retries: int = 0,
               meta: Optional[Mapping[str, Any]] = None, source_date_epoch: Optional[int] = None,
               rerun: bool = False,
               profile_dir: Union[str, "os.PathLike[str]", None] = None,
               profile_archive: Optional[bytes] = None, upload: Optional[str] = None,
               upload_headers: Optional[Mapping[str, str]] = None) -> Job:
        """Queue a build job.

        The payload is the one `enqueue submit` builds, checked first by the
        worker's own rules (JobRejected(field, reason) names what is wrong;
        nothing is sent then).  The job record and the payload are written
        in one step by shared/lua/submit.lua.  An id that exists raises
        JobExists; rerun=True queues an ended job again under its id (the
        old result goes, the event stream and attempt count go on) and
        raises JobBusy while it is queued or running.

        The profile is one of: ``profile``, a directory on the workers
        (relative to builds_root); ``profile_dir``, a local directory packed
        into the job as a .tar.gz (as `enqueue submit --profile-dir`: regular
        files, directories and symlinks; anything else is refused here);
        ``profile_archive``, a tar (optionally gzip or zstd) of your own.
        ``upload`` is the URL the worker PUTs each artifact to ("{name}"
        stands for its path in the output, or it is appended to a URL
        ending in "/"), with ``upload_headers`` on each PUT; ``output``
        may then be left out (the worker uses a directory of its own).
        """
        now = time.time()
        job_id, payload = build_payload(
            profile, output, id=id, memory=memory, cpus=cpus, timeout=timeout, warning=warning,
            image=image, retries=retries, meta=meta, source_date_epoch=source_date_epoch,
            enqueued_at=now, profile_dir=profile_dir, profile_archive=profile_archive,
            upload=upload, upload_headers=upload_headers, limits=self.limits)
        k = self.keys
        reply = self._run(C.SUBMIT, [k.job(job_id), k.queue, k.result(job_id), k.log(job_id)],
                          [payload, C.enqueued_at_arg(now), "rerun" if rerun else "new"])
        digest = C.submit_reply(job_id, reply)
        return Job(id=job_id, client=self, digest=digest, payload=payload)

    def cancel(self, job_id: str) -> bool:
        """Ask the workers to cancel a job (HSET {ns}:cancel id now).  True
        when the cancel was recorded; False when the job already ended."""
        reply = self._run(C.CANCEL, [self.keys.job(job_id), self.keys.cancel],
                          [job_id, "%.3f" % time.time()])
        return bool(int(reply[0]))

    def retry_dead(self, index: int) -> Job:
        """Put dead letter ``index`` (as dead() numbers them) back on the
        queue, only when its payload owns its job record or there is none.
        Raises DeadLetterError (why: gone, no_payload, busy, not_owner)."""
        raw = self.redis.lindex(self.keys.dead, index)
        if raw is None:
            raise DeadLetterError(index, "gone", f"no dead letter at index {index}")
        d = DeadLetter.from_bytes(index, raw)
        if d.payload is None:
            raise DeadLetterError(index, "no_payload", f"dead letter {index} has no payload; left alone")
        k = self.keys
        keys = [k.dead, k.queue] + ([k.job(d.id), k.result(d.id), k.log(d.id)] if d.id else [])
        reply = self._run(C.RETRY_DEAD, keys, [raw, d.payload, C.enqueued_at_arg(time.time()), d.error])
        digest = C.retry_dead_reply(index, d.id, reply)
        return Job(id=d.id or "", client=self, digest=digest, payload=d.payload)

    # ------------------------------------------------------------ reading

    def status(self, job_id: str) -> JobStatus:
        """The job hash and, when there is one, the result.  JobNotFound
        when there is neither."""
        p = self.redis.pipeline(transaction=False)
        p.hgetall(self.keys.job(job_id))
        p.lindex(self.keys.result(job_id), 0)
        h, raw = p.execute()
        if not h and raw is None:
            raise JobNotFound(job_id)
        return JobStatus.from_hash(job_id, h, Result.from_bytes(raw) if raw is not None else None)

    def queue(self) -> QueueInfo:
        """The lengths of the queue, each active list, delayed and dead."""
        r, k = self.redis, self.keys
        pattern = C.glob_escape(k.active("")) + "*"
        names = sorted({_s(n) for n in r.scan_iter(match=pattern, count=1000)})
        active = {n[len(k.active("")):]: int(r.llen(n)) for n in names}
        return QueueInfo(queued=int(r.llen(k.queue)), active=active, delayed=int(r.zcard(k.delayed)),
                         dead=int(r.llen(k.dead)))

    def workers(self) -> List[WorkerInfo]:
        """Every worker of {ns}:workers with its heartbeat (lost ones too)."""
        r = self.redis
        out = []
        for wid, score in r.zrange(self.keys.workers, 0, -1, withscores=True):
            w = _s(wid)
            out.append(WorkerInfo.from_hash(w, float(score), r.hgetall(self.keys.worker(w)),
                                        self.limits.heartbeat_ttl))
        return out

    def dead(self, start: int = 0, count: int = 50) -> List[DeadLetter]:
        """Dead letters, newest first; index as retry_dead() takes it."""
        raws = self.redis.lrange(self.keys.dead, start, start + count - 1) if count > 0 else []
        return [DeadLetter.from_bytes(start + i, raw) for i, raw in enumerate(raws)]

    def recent_results(self, start: int = 0, count: int = 50) -> List[Result]:
        """Results of {ns}:results, newest first (unreadable ones left out)."""
        out = []
        for raw in self.redis.lrange(self.keys.results, start, start + count - 1) if count > 0 else []:
            try:
                out.append(Result.from_bytes(raw))
            except Exception:
                continue
        return out

    def queued(self, start: int = 0, count: int = 50) -> List[QueuedJob]:
        """Queued payloads, the next one to be taken first (position 0)."""
        if count <= 0:
            return []
        raws = self.redis.lrange(self.keys.queue, -(start + count), -(start + 1))
        out = []
        for i, raw in enumerate(reversed(raws)):
            jid, at, prof = C.payload_summary(raw)
            out.append(QueuedJob(position=start + i, id=jid, enqueued_at=at, size=len(raw), profile=prof))
        return out

    def running(self) -> List[JobStatus]:
        """The jobs in the live workers' active lists, with their job hash."""
        r, k = self.redis, self.keys
        out = []
        for wid in r.zrange(k.workers, 0, -1):
            w = _s(wid)
            if not r.exists(k.worker(w)):
                continue        # lost: the reaper will move its jobs back
            for raw in r.lrange(k.active(w), 0, -1):
                jid = payload_id(raw)
                if jid is None:
                    continue
                h = r.hgetall(k.job(jid))
                if h:
                    out.append(JobStatus.from_hash(jid, h))
        return out

    # ------------------------------------------------------------ waiting

    def result(self, job_id: str, timeout: float = 600.0) -> Result:
        """Wait at most timeout seconds for the job's result.

        The result list {ns}:result:<id> is LPUSHed once, so it is read
        with LINDEX (a BLPOP would take it from every other waiter).  To
        wake up when it lands, the wait notes where the job's event stream
        ends, then checks the result list and the job hash, then blocks in
        XREAD on the stream from the noted entry: the `finished` (or
        `dead`) event is added in the same atomic step as the result, so
        a result that lands between the check and the read wakes the read.
        Every block is bounded, so a job that ended without an event (a
        stream that expired) is seen by the next check.  When Redis goes
        away the wait reconnects with backoff inside its deadline.
        An id nothing is known of yet is waited for: a producer need not
        write the job hash, which the worker then writes when it takes the
        job.  Raises ResultTimeout, JobDead (dead letters have no result)
        or JobNotFound (the job ended and its result expired).
        """
        deadline = time.monotonic() + timeout
        backoff = C.Backoff(deadline)
        conn: Optional[redis_lib.Redis] = None
        last: Optional[str] = None
        check = True
        try:
            while True:
                try:
                    if conn is None:
                        conn = self._blocking()
                    if last is None:
                        top = conn.xrevrange(self.keys.log(job_id), "+", "-", count=1)
                        last = _s(top[0][0]) if top else "0-0"
                        check = True
                    if check:
                        res = self._check_result(conn, job_id)
                        if res is not None:
                            return res
                    left = C.remaining(deadline) or 0.0
                    if left <= 0:
                        raise ResultTimeout(job_id, timeout)
                    block = max(1, min(C.BLOCK_MS, int(left * 1000)))
                    got = C.xread_entries(conn.xread({self.keys.log(job_id): last}, count=C.REPLAY_COUNT,
                                                     block=block))
                    backoff.reset()
                    # Look again when the job may have ended, or after a quiet block.
                    check = not got or any(f.get(b"type") in (b"finished", b"dead") for _, f in got)
                    if got:
                        last = got[-1][0]
                except _LOST:
                    self._drop(conn)
                    conn = None
                    delay = backoff.next()
                    if delay is None:
                        raise ResultTimeout(job_id, timeout) from None
                    time.sleep(delay)
                    check = True
        finally:
            self._drop(conn)

    def _check_result(self, r: redis_lib.Redis, job_id: str) -> Optional[Result]:
        """The result if it is there; raise when none will ever come."""
        raw = r.lindex(self.keys.result(job_id), 0)
        if raw is not None:
            return Result.from_bytes(raw)
        st, err = C.state_of(r.hmget(self.keys.job(job_id), "state", "error"))
        if C.is_dead(st):
            raise JobDead(job_id, err)
        if C.is_final(st):
            raw = r.lindex(self.keys.result(job_id), 0)     # landed between the reads
            if raw is not None:
                return Result.from_bytes(raw)
            raise JobNotFound(job_id)                       # ended, and its result expired
        return None

    def events(self, job_id: str, since_seq: int = 0, *,
               timeout: Optional[float] = None) -> Iterator[Event]:
        """The job's events with seq > since_seq: the stored stream
        {ns}:log:<id> first, then new ones as they come (XREAD BLOCK from
        the last entry read; no pub/sub).  Ends after `finished` or `dead`
        when nothing follows it and the job hash says the job ended (a
        rerun adds its events after the earlier run's: the follower goes on
        into it), or when the hash says the job ended and the stream has
        nothing more.  Each seq comes once and in order, across Redis restarts too
        (the read resumes from the last entry id, and seqs already given
        are skipped).  An id nothing is known of yet is waited for (see
        result()); timeout bounds the whole follow (EventsTimeout).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = C.Backoff(deadline)
        log, job = self.keys.log(job_id), self.keys.job(job_id)
        conn: Optional[redis_lib.Redis] = None
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
                    got = C.xread_entries(conn.xread({log: last_id}, count=C.REPLAY_COUNT,
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
                    state = _s(conn.hget(job, "state")) or None
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
                    self._drop(conn)
                    conn = None
                    delay = backoff.next()
                    if delay is None:
                        raise EventsTimeout(job_id, timeout or 0.0) from None
                    time.sleep(delay)
        finally:
            self._drop(conn)


def _event(fields: Dict[bytes, bytes], stream_id: str) -> Optional[Event]:
    """A stream entry's event, or None when it cannot be read."""
    raw = fields.get(b"event")
    if raw is None:
        return None
    try:
        return Event.from_bytes(raw, stream_id)
    except Exception:
        return None
