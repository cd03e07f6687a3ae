"""What Client and AsyncClient share: the scripts, reply parsing, backoff.

Neither client does I/O here, so the sync and the async one cannot
disagree on what a reply means.
"""
from __future__ import annotations

import hashlib
import re
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .errors import DeadLetterError, JobBusy, JobExists
from .types import FINAL_STATES, Status, _s
from .validate import MpMap, MpStr, _decode_at, precheck

# How long a blocking read waits in Redis before the client looks around
# (deadline, job hash); the socket timeout of that connection is longer, so
# a silent server is told apart from a quiet stream.
BLOCK_MS = 2000
BLOCK_SOCKET_TIMEOUT = BLOCK_MS / 1000 + 8.0
# The name (CLIENT SETNAME) of the connections that block in XREAD for a follower.
FOLLOW_CLIENT_NAME = "debate_queue:follow"
REPLAY_COUNT = 500
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0

FINAL_NAMES = frozenset(s.value for s in FINAL_STATES)


def _find_submit_lua() -> str:
    """shared/lua/submit.lua: beside this module (a symlink in the source
    tree, a copy once installed), else in the source tree's shared/lua."""
    here = Path(__file__).resolve().parent
    for p in (Path(__file__).parent / "submit.lua", here.parent.parent / "lua" / "submit.lua"):
        if p.is_file():
            return p.read_text()
    raise FileNotFoundError("submit.lua not found beside debate_queue (shared/lua/submit.lua)")


class Script:
    """A Lua script run with EVALSHA, falling back to EVAL on NOSCRIPT."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()


SUBMIT = Script(_find_submit_lua())

# KEYS job, cancel; ARGV id, now.  {1, state} when the cancel was recorded,
# {0, state} when the job already ended (nothing to cancel).  A job not
# known yet gets the cancel anyway, as `enqueue cancel` does.
CANCEL = Script("""
local st = redis.call('HGET', KEYS[1], 'state')
local final = {succeeded = true, failed = true, timed_out = true, oom_killed = true,
               cancelled = true, error = true, dead = true}
if st and final[st] then return {0, st} end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {1, st or ''}
""")

# KEYS dead, queue[, job, result, log]; ARGV entry, payload, now, error.
# Puts the payload of one dead letter back, removing that exact entry
# (LREM by value: an index that shifted meanwhile does not matter, and two
# operators retrying one entry queue it once).  Only when the payload owns
# its job record (the record's digest is the payload's SHA-1) or there is
# no record: a duplicate id refused while the real job existed must not
# take the real job's record over.  A record without a digest, written by
# a producer that sets none, is left alone only while queued or running,
# as before digests.  The record is reset as a rerun resets it.
RETRY_DEAD = Script("""
local digest = redis.sha1hex(ARGV[2])
if KEYS[3] then
  local h = redis.call('HMGET', KEYS[3], 'state', 'digest')
  if h[1] then
    if h[2] and h[2] ~= digest then return {'not_owner', h[1]} end
    if h[1] == 'queued' or h[1] == 'running' then return {'busy', h[1]} end
  end
end
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return {'gone', ''} end
redis.call('LPUSH', KEYS[2], ARGV[2])
if KEYS[3] then
  redis.call('DEL', KEYS[4])
  redis.call('HDEL', KEYS[3], 'finished_at', 'exit_code', 'error', 'phase', 'lost', 'requeues',
             'last_error')
  redis.call('HSET', KEYS[3], 'state', 'queued', 'digest', digest, 'enqueued_at', ARGV[3],
             'last_error', ARGV[4])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[5])
end
return {'ok', digest}
""")


def enqueued_at_arg(t: float) -> str:
    """enqueued_at as submit.lua's ARGV[2] (what `enqueue submit` writes)."""
    return "%.6f" % t


def submit_reply(job_id: str, reply: Any) -> str:
    """submit.lua's answer: the digest, or the error it stands for."""
    if not isinstance(reply, list) or len(reply) != 2:
        raise RuntimeError(f"submit.lua answered {reply!r}")
    verdict, what = _s(reply[0]), _s(reply[1])
    if verdict == "ok":
        return what
    if verdict == "busy":
        raise JobBusy(job_id, what)
    if verdict == "exists":
        raise JobExists(job_id, what)
    raise RuntimeError(f"submit.lua answered {reply!r}")


def retry_dead_reply(index: int, job_id: Optional[str], reply: Any) -> str:
    """RETRY_DEAD's answer: the new digest, or DeadLetterError."""
    verdict = _s(reply[0]) if isinstance(reply, list) and reply else ""
    what = _s(reply[1]) if isinstance(reply, list) and len(reply) > 1 else ""
    if verdict == "ok":
        return what
    if verdict == "busy":
        raise DeadLetterError(index, "busy", f"dead letter {index}: job {job_id} is {what}; left alone")
    if verdict == "not_owner":
        raise DeadLetterError(index, "not_owner",
                              f"dead letter {index}: job {job_id}'s record ({what}) belongs to another "
                              "payload (a duplicate id); left alone")
    if verdict == "gone":
        raise DeadLetterError(index, "gone", f"dead letter {index} was removed meanwhile")
    raise RuntimeError(f"retry-dead script answered {reply!r}")


def glob_escape(s: str) -> str:
    """s as a literal in a Redis glob pattern."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", s)


def payload_summary(p: bytes) -> Tuple[Optional[str], Optional[float], Optional[str]]:
    """(id, enqueued_at, profile) of a queued payload; None for what is
    missing or unreadable (a hostile payload stays harmless here)."""
    try:
        precheck(p)
        o = _decode_at(p, 0)[0]
    except Exception:
        return None, None, None
    if not isinstance(o, MpMap):
        return None, None, None
    from .validate import id_valid
    v = o.get("id")
    jid = v.decode("ascii") if type(v) is MpStr and id_valid(bytes(v)) else None
    t = o.get("enqueued_at")
    at = float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None
    pr = o.get("profile")
    prof = pr.decode("utf-8", "replace") if type(pr) is MpStr else None
    return jid, at, prof


def xread_entries(reply: Any) -> List[Tuple[str, Dict[bytes, bytes]]]:
    """XREAD's reply (one stream) as [(entry id, fields)]."""
    out: List[Tuple[str, Dict[bytes, bytes]]] = []
    for _stream, entries in reply or []:
        out.extend((_s(i), f) for i, f in entries)
    return out


def state_of(h: Sequence[Any]) -> Tuple[Optional[str], Optional[str]]:
    """(state, error) of an HMGET state error reply."""
    st = _s(h[0]) if h and h[0] is not None else None
    err = _s(h[1]) if len(h) > 1 and h[1] is not None else None
    return st, err


def is_final(state: Optional[str]) -> bool:
    return state in FINAL_NAMES


def is_dead(state: Optional[str]) -> bool:
    return state == Status.DEAD.value


class Backoff:
    """Delays between reconnects: doubling from BACKOFF_MIN to BACKOFF_MAX,
    never past the deadline (a monotonic time, or None)."""

    def __init__(self, deadline: Optional[float]) -> None:
        self.deadline = deadline
        self.delay = BACKOFF_MIN

    def next(self) -> Optional[float]:
        """The next delay, or None when the deadline has passed."""
        d = self.delay
        self.delay = min(self.delay * 2, BACKOFF_MAX)
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                return None
            d = min(d, left)
        return d

    def reset(self) -> None:
        self.delay = BACKOFF_MIN


def remaining(deadline: Optional[float]) -> Optional[float]:
    """Seconds to the deadline (None: no deadline), at least 0."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())
