"""The contract's records as dataclasses (shared/PROTOCOL.md).

Each ``from_wire``/``from_hash`` reads what the worker wrote and keeps the
whole decoded record in ``raw``, so fields this version does not know are
still there.  Nothing here talks to Redis.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

import msgpack

__all__ = ["Status", "FINAL_STATES", "Artifact", "Result", "Event", "JobStatus", "WorkerInfo",
           "DeadLetter", "QueueInfo", "QueuedJob", "Job", "unpack"]


class Status(str, enum.Enum):
    """A job's state (PROTOCOL.md, "Job states"); the value is the wire name."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    OOM_KILLED = "oom_killed"
    CANCELLED = "cancelled"
    ERROR = "error"
    DEAD = "dead"

    @property
    def final(self) -> bool:
        """Whether the job has ended (every state but queued and running)."""
        return self not in (Status.QUEUED, Status.RUNNING)

    @classmethod
    def parse(cls, value: Union[str, bytes, None]) -> Optional["Status"]:
        """The Status of a wire name, or None for a missing or unknown one."""
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        try:
            return cls(value) if value is not None else None
        except ValueError:
            return None

    def __str__(self) -> str:
        return self.value


FINAL_STATES = frozenset(s for s in Status if s.final)


def unpack(data: bytes, errors: str = "replace") -> Any:
    """Decode one msgpack value the worker wrote (results, events, entries)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, unicode_errors=errors)


def _s(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return "" if v is None else str(v)


def _opt_s(v: Any) -> Optional[str]:
    return None if v is None else _s(v)


def _f(v: Any, default: float = 0.0) -> float:
    try:
        return float(v) if v is not None else default
    except (TypeError, ValueError):
        return default


def _opt_f(v: Any) -> Optional[float]:
    return None if v is None else _f(v)


def _i(v: Any, default: int = 0) -> int:
    try:
        return int(float(v)) if v is not None else default
    except (TypeError, ValueError):
        return default


def _opt_i(v: Any) -> Optional[int]:
    return None if v is None else _i(v)


@dataclass
class Artifact:
    """One regular file of the output directory; with upload, also the URL
    it was PUT to (without userinfo and query) and whether it was."""

    name: str
    size: int
    sha256: str
    url: Optional[str] = None
    uploaded: Optional[bool] = None

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> "Artifact":
        up = m.get("uploaded")
        return cls(name=_s(m.get("name")), size=_i(m.get("size")), sha256=_s(m.get("sha256")),
                   url=_opt_s(m.get("url")),
                   uploaded=bool(up) if up is not None else None)


@dataclass
class Result:
    """A finished job's result map (PROTOCOL.md, "The result")."""

    id: str
    status: Optional[Status]
    exit_code: int = -1
    duration: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    worker: str = ""
    attempt: int = 0
    image: str = ""
    artifacts: List[Artifact] = field(default_factory=list)
    error: str = ""
    log_tail: List[str] = field(default_factory=list)
    dropped_lines: int = 0
    meta: Optional[Any] = None
    raw: Dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the build succeeded."""
        return self.status is Status.SUCCEEDED

    @classmethod
    def from_wire(cls, m: Mapping[str, Any]) -> "Result":
        arts = m.get("artifacts")
        tail = m.get("log_tail")
        return cls(
            id=_s(m.get("id")), status=Status.parse(m.get("status")),
            exit_code=_i(m.get("exit_code"), -1), duration=_f(m.get("duration")),
            started_at=_f(m.get("started_at")), finished_at=_f(m.get("finished_at")),
            worker=_s(m.get("worker")), attempt=_i(m.get("attempt")), image=_s(m.get("image")),
            artifacts=[Artifact.from_wire(a) for a in arts if isinstance(a, dict)]
            if isinstance(arts, list) else [],
            error=_s(m.get("error")),
            log_tail=[_s(x) for x in tail] if isinstance(tail, list) else [],
            dropped_lines=_i(m.get("dropped_lines")), meta=m.get("meta"), raw=dict(m))

    @classmethod
    def from_bytes(cls, data: bytes) -> "Result":
        m = unpack(data)
        if not isinstance(m, dict):
            raise ValueError("a result must be a msgpack map")
        return cls.from_wire(m)


_EVENT_COMMON = ("id", "seq", "ts", "type", "attempt")


@dataclass
class Event:
    """One event of a job (PROTOCOL.md, "Events").

    ``fields`` holds the type's own fields; the properties below read the
    usual ones (None when this event has no such field).
    """

    type: str
    seq: int
    ts: float
    id: str = ""
    attempt: int = 0
    fields: Dict[str, Any] = field(default_factory=dict)
    stream_id: str = ""     # the entry id in {ns}:log:<id>, when read from the stream

    @classmethod
    def from_wire(cls, m: Mapping[str, Any], stream_id: str = "") -> "Event":
        return cls(type=_s(m.get("type")), seq=_i(m.get("seq")), ts=_f(m.get("ts")),
                   id=_s(m.get("id")), attempt=_i(m.get("attempt")),
                   fields={k: v for k, v in m.items() if k not in _EVENT_COMMON},
                   stream_id=stream_id)

    @classmethod
    def from_bytes(cls, data: bytes, stream_id: str = "") -> "Event":
        m = unpack(data)
        if not isinstance(m, dict):
            raise ValueError("an event must be a msgpack map")
        return cls.from_wire(m, stream_id)

    @property
    def final(self) -> bool:
        """Whether this event ends the job (``finished`` or ``dead``)."""
        return self.type in ("finished", "dead")

    def to_dict(self) -> Dict[str, Any]:
        """The event as the wire map (JSON-friendly unless meta holds bytes)."""
        d: Dict[str, Any] = {"id": self.id, "seq": self.seq, "ts": self.ts, "type": self.type,
                             "attempt": self.attempt}
        d.update(self.fields)
        return d

    # log
    @property
    def stream(self) -> Optional[str]:
        return _opt_s(self.fields.get("stream"))

    @property
    def lines(self) -> List[str]:
        v = self.fields.get("lines")
        return [_s(x) for x in v] if isinstance(v, list) else []

    @property
    def dropped(self) -> int:
        return _i(self.fields.get("dropped"))

    # phase
    @property
    def name(self) -> Optional[str]:
        return _opt_s(self.fields.get("name"))

    @property
    def line(self) -> Optional[str]:
        return _opt_s(self.fields.get("line"))

    # started
    @property
    def worker(self) -> Optional[str]:
        return _opt_s(self.fields.get("worker"))

    @property
    def runtime(self) -> Optional[str]:
        return _opt_s(self.fields.get("runtime"))

    @property
    def image(self) -> Optional[str]:
        return _opt_s(self.fields.get("image"))

    @property
    def limits(self) -> Dict[str, Any]:
        v = self.fields.get("limits")
        return dict(v) if isinstance(v, dict) else {}

    # stats, warning
    @property
    def elapsed(self) -> Optional[float]:
        return _opt_f(self.fields.get("elapsed"))

    @property
    def memory(self) -> Optional[int]:
        return _opt_i(self.fields.get("memory"))

    @property
    def cpu(self) -> Optional[float]:
        return _opt_f(self.fields.get("cpu"))

    @property
    def message(self) -> Optional[str]:
        return _opt_s(self.fields.get("message"))

    # requeued, dead
    @property
    def reason(self) -> Optional[str]:
        return _opt_s(self.fields.get("reason"))

    @property
    def error(self) -> Optional[str]:
        return _opt_s(self.fields.get("error"))

    @property
    def due(self) -> Optional[float]:
        return _opt_f(self.fields.get("due"))

    # finished
    @property
    def result(self) -> Optional[Result]:
        v = self.fields.get("result")
        return Result.from_wire(v) if isinstance(v, dict) else None


def _hash_str(h: Mapping[Any, Any]) -> Dict[str, str]:
    return {_s(k): _s(v) for k, v in h.items()}


@dataclass
class JobStatus:
    """A job's record {ns}:job:<id>, with its result when there is one."""

    id: str
    state: Optional[Status]
    worker: Optional[str] = None
    attempt: int = 0
    enqueued_at: Optional[float] = None
    started_at: Optional[float] = None
    finished_at: Optional[float] = None
    exit_code: Optional[int] = None
    error: Optional[str] = None
    phase: Optional[str] = None
    lost: int = 0
    requeues: int = 0
    last_error: Optional[str] = None
    digest: Optional[str] = None
    result: Optional[Result] = None
    fields: Dict[str, str] = field(default_factory=dict)   # the whole hash, as text

    @property
    def final(self) -> bool:
        """Whether the job has ended."""
        return self.state is not None and self.state.final

    @classmethod
    def from_hash(cls, job_id: str, h: Mapping[Any, Any], result: Optional[Result] = None) -> "JobStatus":
        f = _hash_str(h)
        state = Status.parse(f.get("state"))
        if state is None and not f and result is not None:
            state = result.status       # the hash is gone, the result is left
        return cls(id=job_id, state=state, worker=f.get("worker"), attempt=_i(f.get("attempt")),
                   enqueued_at=_opt_f(f.get("enqueued_at")), started_at=_opt_f(f.get("started_at")),
                   finished_at=_opt_f(f.get("finished_at")), exit_code=_opt_i(f.get("exit_code")),
                   error=f.get("error"), phase=f.get("phase"), lost=_i(f.get("lost")),
                   requeues=_i(f.get("requeues")), last_error=f.get("last_error"),
                   digest=f.get("digest"), result=result, fields=f)


@dataclass
class WorkerInfo:
    """One worker of {ns}:workers with its heartbeat hash.

    ``lost``: it is still in the sorted set but its last beat is older than
    heartbeat_ttl, or its record is gone (the reaper will move its jobs
    back).  ``last_beat`` is its score, the time of its last beat; ``beat``
    the time its record was last written.
    """

    id: str
    last_beat: float
    lost: bool = False
    host: Optional[str] = None
    pid: Optional[int] = None
    version: Optional[str] = None
    started_at: Optional[float] = None
    beat: Optional[float] = None
    concurrency: int = 0
    running: int = 0
    jobs: List[str] = field(default_factory=list)
    fields: Dict[str, str] = field(default_factory=dict)

    @property
    def free(self) -> int:
        """Slots not in use."""
        return max(0, self.concurrency - self.running)

    @classmethod
    def from_hash(cls, worker_id: str, last_beat: float, h: Mapping[Any, Any],
                  heartbeat_ttl: float = 15.0, now: Optional[float] = None) -> "WorkerInfo":
        f = _hash_str(h)
        if not f:
            return cls(id=worker_id, last_beat=last_beat, lost=True)
        late = (time.time() if now is None else now) - last_beat > heartbeat_ttl
        return cls(id=worker_id, last_beat=last_beat, lost=late, host=f.get("host"), pid=_opt_i(f.get("pid")),
                   version=f.get("version"), started_at=_opt_f(f.get("started_at")),
                   beat=_opt_f(f.get("beat")), concurrency=_i(f.get("concurrency")),
                   running=_i(f.get("running")),
                   jobs=[j for j in f.get("jobs", "").split(",") if j], fields=f)


@dataclass
class DeadLetter:
    """One entry of {ns}:dead (PROTOCOL.md, "Dead letters").

    ``index`` is its place in the list when it was read (0 the newest);
    ``entry`` the entry's exact bytes, which retry_dead() removes by value.
    """

    index: int
    reason: str
    error: str = ""
    id: Optional[str] = None
    worker: Optional[str] = None
    ts: float = 0.0
    payload: Optional[bytes] = None
    entry: bytes = field(default=b"", repr=False)
    readable: bool = True

    @classmethod
    def from_bytes(cls, index: int, data: bytes) -> "DeadLetter":
        from .validate import payload_id     # no cycle at import time
        try:
            m = unpack(data, "surrogateescape")
        except Exception:
            m = None
        if not isinstance(m, dict):
            return cls(index=index, reason="unreadable", entry=data, readable=False)
        p = m.get("payload")
        payload = p if isinstance(p, bytes) else p.encode("utf-8", "surrogateescape") \
            if isinstance(p, str) else None
        jid = _opt_s(m.get("id"))
        if not jid and payload is not None:
            jid = payload_id(payload)
        return cls(index=index, reason=_s(m.get("reason")), error=_s(m.get("error")), id=jid or None,
                   worker=_opt_s(m.get("worker")), ts=_f(m.get("ts")), payload=payload, entry=data)


@dataclass
class QueueInfo:
    """The lengths `enqueue queue` shows."""

    queued: int
    active: Dict[str, int]
    delayed: int
    dead: int

    @property
    def active_total(self) -> int:
        return sum(self.active.values())


@dataclass
class QueuedJob:
    """A payload waiting in {ns}:queue; ``position`` 0 is taken next.

    ``id`` is None when the payload has no readable id (a worker will
    dead-letter it).
    """

    position: int
    id: Optional[str]
    enqueued_at: Optional[float]
    size: int
    profile: Optional[str] = None


@dataclass
class Job:
    """A submitted job: its id and the client that submitted it.

    The methods are the client's for this id: with a Client they return
    their answer, with an AsyncClient an awaitable (events(): an async
    iterator), e.g. ``await job.result()``, ``async for ev in job.events()``.
    """

    id: str
    client: Any = field(repr=False)
    digest: str = ""                  # SHA-1 of the payload: what owns the job record
    payload: bytes = field(default=b"", repr=False)

    def status(self) -> Any:
        """client.status(id): a JobStatus."""
        return self.client.status(self.id)

    def result(self, timeout: float = 600.0) -> Any:
        """client.result(id, timeout): a Result."""
        return self.client.result(self.id, timeout)

    def events(self, since_seq: int = 0, *, timeout: Optional[float] = None) -> Any:
        """client.events(id, since_seq): Events until finished or dead."""
        return self.client.events(self.id, since_seq, timeout=timeout)

    def cancel(self) -> Any:
        """client.cancel(id): whether the cancel was recorded."""
        return self.client.cancel(self.id)
