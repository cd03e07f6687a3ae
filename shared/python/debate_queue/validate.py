"""Job payloads: build them as `enqueue submit` does, check them as the worker does.

``check_payload()`` is a port of shared/payload.c's payload_decode() (and of
shared/mpack.c's mp_precheck()): the same checks in the same order, so a
payload gets the refusal reason here that a worker would dead-letter it
with.  It needs no filesystem: payload_decode() checks paths by their text
alone (the worker resolves them later), and so does this.  What depends on
a worker's worker.ini (builds_root, the image allow list, the maxima) comes
from ``Limits``, whose defaults are worker.ini's.

tests/vectors/payloads.txt holds payloads with the reason each must get;
tests/unit/test_vectors.c runs them through payload_decode() and
tests/python/test_vectors.py through check_payload(), so the two cannot
drift apart.
"""
from __future__ import annotations

import configparser
import math
import os
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import msgpack

from .errors import JobRejected

__all__ = ["REFUSALS", "CLIENT_REFUSALS", "Limits", "MpStr", "MpMap", "MpExt", "precheck", "decode",
           "check_payload", "refusal", "build_payload", "new_id", "id_valid", "parse_size",
           "payload_id"]

# PROTOCOL.md's refusal reasons, in shared/payload.c's order, then the worker's own.
CLIENT_REFUSALS = ("payload_too_large", "malformed", "too_deep", "not_a_map", "missing_field",
                   "wrong_type", "bad_value", "bad_id", "bad_path", "image_not_allowed",
                   "over_limit", "bad_archive")
# bad_archive: payload_decode() gives it to an empty profile_archive; the rest
# of it (an entry the worker will not unpack) only the worker finds, though
# pack_profile_dir() refuses what it can see before sending.
# duplicate_id: the worker's claim found the id's record bound to another
# payload (its digest) or not queued; worker_lost: lost with its worker too
# often.  No payload check can predict either.
REFUSALS = CLIENT_REFUSALS + ("duplicate_id", "worker_lost")

MAX_DEPTH = 16                  # MP_MAX_DEPTH
ID_MAX = 64
PATH_FIELD_MAX = 1024
NAME_MAX = 255
MIN_MEMORY = 6 << 20            # docker refuses less
EPOCH_MAX = 253402300799        # 9999-12-31
UINT64_MAX = (1 << 64) - 1
UPLOAD_URL_MAX = 2048
UPLOAD_HEADERS_MAX = 32
UPLOAD_HEADER_MAX = 4096
# The headers the worker sets on each PUT itself (payload_upload()'s own[]).
UPLOAD_OWN_HEADERS = ("content-length", "content-digest", "transfer-encoding", "host", "expect",
                      "connection", "te", "upgrade")
_TOKEN_EXTRA = frozenset(b"!#$%&'*+-.^_`|~")
_SIZE_MULT = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


@dataclass(frozen=True)
class Limits:
    """What a worker's worker.ini decides about a job; defaults are worker.ini's.

    ``builds_root``: when given, an absolute profile/output path inside it is
    made relative (as `enqueue submit` does) and one outside is refused;
    when None, absolute paths are refused (the client cannot know the root).
    ``images``: the allow list (``image`` and ``images`` of [sandbox]); None
    leaves the image to the worker.  ``timeout`` is the default timeout a
    ``warning`` is compared with when the job sets no timeout.
    ``heartbeat_ttl``: a worker whose last beat (its score in {ns}:workers)
    is older than this is dead.
    """

    builds_root: Optional[str] = None
    images: Optional[Tuple[str, ...]] = None
    max_memory: int = 16 << 30
    max_cpus: float = 16.0
    max_timeout: float = 4 * 3600.0
    timeout: float = 1200.0
    max_payload: int = 1 << 20
    heartbeat_ttl: float = 15.0

    @classmethod
    def from_ini(cls, path: Union[str, "os.PathLike[str]"]) -> "Limits":
        """The limits a worker.ini sets (what is not set keeps its default,
        and the image allow list is ``image`` plus ``images``)."""
        cp = configparser.ConfigParser(interpolation=None, delimiters=("=",), strict=False,
                                       comment_prefixes=("#", ";"), inline_comment_prefixes=(";",))
        with open(path) as f:
            cp.read_file(f)

        def get(sec: str, key: str) -> Optional[str]:
            v = cp.get(sec, key, fallback=None)
            return v.strip() if v is not None and v.strip() else None

        d = cls()
        image = get("sandbox", "image") or "localhost/debate-archiso:latest"
        mem, pay = get("sandbox", "max_memory"), get("queue", "max_payload")
        return cls(builds_root=get("worker", "builds_root") or "/var/lib/debate/builds",
                   images=(image,) + tuple((get("sandbox", "images") or "").split()),
                   max_memory=parse_size(mem) if mem else d.max_memory,
                   max_cpus=float(get("sandbox", "max_cpus") or d.max_cpus),
                   max_timeout=float(get("sandbox", "max_timeout") or d.max_timeout),
                   timeout=float(get("sandbox", "timeout") or d.timeout),
                   max_payload=parse_size(pay) if pay else d.max_payload,
                   heartbeat_ttl=float((get("worker", "heartbeat_ttl") or str(d.heartbeat_ttl)).rstrip("s")))


class MpStr(bytes):
    """A msgpack str, kept as its bytes (a msgpack bin decodes to plain bytes)."""


class MpMap(list):  # type: ignore[type-arg]
    """A msgpack map as its (key, value) pairs, in order, duplicates kept."""

    def get(self, key: str) -> Any:
        """The value of the first str key equal to key (as mp_get() finds it);
        None when absent, and for nil too: has() tells them apart."""
        k = key.encode()
        for kk, v in self:
            if type(kk) is MpStr and kk == k:
                return v
        return None

    def has(self, key: str) -> bool:
        k = key.encode()
        return any(type(kk) is MpStr and kk == k for kk, _ in self)


class MpExt(NamedTuple):
    """A msgpack extension (any type code, -128 to 127, as the wire allows)."""

    code: int
    data: bytes


class _Bad(Exception):
    def __init__(self, reason: str, field: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.field = field
        self.message = message


# ---------------------------------------------------------------- msgpack

def _precheck_step(buf: bytes, p: int, end: int) -> Tuple[int, int, int]:
    """One value's header at p: (header bytes, bytes to skip, child elements)."""
    b = buf[p]
    hdr, n, skip, elems = 1, 0, 0, 0
    if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
        pass
    elif 0x80 <= b <= 0x8F:
        elems = 2 * (b & 0x0F)
    elif 0x90 <= b <= 0x9F:
        elems = b & 0x0F
    elif 0xA0 <= b <= 0xBF:
        skip = b & 0x1F
    elif b in (0xC4, 0xD9):
        hdr, n = 2, 1
    elif b in (0xC5, 0xDA):
        hdr, n = 3, 2
    elif b in (0xC6, 0xDB):
        hdr, n = 5, 4
    elif b == 0xC7:
        hdr, n = 3, 1           # marker, length, type
    elif b == 0xC8:
        hdr, n = 4, 2
    elif b == 0xC9:
        hdr, n = 6, 4
    elif b in (0xCA, 0xCE, 0xD2):
        skip = 4
    elif b in (0xCB, 0xCF, 0xD3):
        skip = 8
    elif b in (0xCC, 0xD0):
        skip = 1
    elif b in (0xCD, 0xD1):
        skip = 2
    elif b == 0xD4:
        skip = 2
    elif b == 0xD5:
        skip = 3
    elif b == 0xD6:
        skip = 5
    elif b == 0xD7:
        skip = 9
    elif b == 0xD8:
        skip = 17
    elif b == 0xDC:
        hdr, n, elems = 3, 2, 1
    elif b == 0xDD:
        hdr, n, elems = 5, 4, 1
    elif b == 0xDE:
        hdr, n, elems = 3, 2, 2
    elif b == 0xDF:
        hdr, n, elems = 5, 4, 2
    else:
        raise _Bad("malformed", "payload", f"invalid msgpack byte 0x{b:02x} at offset {p}")
    if end - p < hdr:
        raise _Bad("malformed", "payload", f"truncated msgpack ({len(buf)} bytes)")
    if n:
        v = int.from_bytes(buf[p + 1:p + 1 + n], "big")
        if b >= 0xDC:
            elems *= v          # array: 1 per item, map: 2
        else:
            skip += v
    return hdr, skip, elems


def precheck(buf: bytes, max_depth: int = MAX_DEPTH) -> None:
    """mp_precheck(): exactly one msgpack object, nested less than max_depth,
    no container announcing more elements than bytes remain.  Raises _Bad."""
    end = len(buf)
    want = [1]
    p = 0
    max_depth = min(max_depth, MAX_DEPTH)
    while want:
        if want[-1] == 0:
            want.pop()
            continue
        if p >= end:
            raise _Bad("malformed", "payload", f"truncated msgpack ({len(buf)} bytes)")
        want[-1] -= 1
        hdr, skip, elems = _precheck_step(buf, p, end)
        p += hdr
        if skip > end - p:
            raise _Bad("malformed", "payload", f"truncated msgpack ({len(buf)} bytes)")
        p += skip
        if elems > 0:
            if elems > end - p:
                raise _Bad("malformed", "payload",
                           f"msgpack container announces {elems} elements in {end - p} bytes")
            if len(want) >= max_depth:
                raise _Bad("too_deep", "payload", f"nested deeper than {max_depth} levels")
            want.append(elems)
    if p != end:
        raise _Bad("malformed", "payload", f"{end - p} trailing bytes after the msgpack object")


def _decode_at(buf: bytes, p: int) -> Tuple[Any, int]:
    """Decode the value at p (already prechecked); (value, next offset)."""
    b = buf[p]
    if b <= 0x7F:
        return b, p + 1
    if b >= 0xE0:
        return b - 0x100, p + 1
    if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
        if b <= 0x8F:
            n, p = b & 0x0F, p + 1
        else:
            w = 2 if b == 0xDE else 4
            n, p = int.from_bytes(buf[p + 1:p + 1 + w], "big"), p + 1 + w
        m = MpMap()
        for _ in range(n):
            k, p = _decode_at(buf, p)
            v, p = _decode_at(buf, p)
            m.append((k, v))
        return m, p
    if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
        if b <= 0x9F:
            n, p = b & 0x0F, p + 1
        else:
            w = 2 if b == 0xDC else 4
            n, p = int.from_bytes(buf[p + 1:p + 1 + w], "big"), p + 1 + w
        a = []
        for _ in range(n):
            v, p = _decode_at(buf, p)
            a.append(v)
        return a, p
    if 0xA0 <= b <= 0xBF:
        n = b & 0x1F
        return MpStr(buf[p + 1:p + 1 + n]), p + 1 + n
    if b in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
        w = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[b]
        n = int.from_bytes(buf[p + 1:p + 1 + w], "big")
        s = buf[p + 1 + w:p + 1 + w + n]
        return (MpStr(s) if b >= 0xD9 else bytes(s)), p + 1 + w + n
    if b == 0xC0:
        return None, p + 1
    if b in (0xC2, 0xC3):
        return b == 0xC3, p + 1
    if b == 0xCA:
        return struct.unpack(">f", buf[p + 1:p + 5])[0], p + 5
    if b == 0xCB:
        return struct.unpack(">d", buf[p + 1:p + 9])[0], p + 9
    if b in (0xCC, 0xCD, 0xCE, 0xCF):
        w = 1 << (b - 0xCC)
        return int.from_bytes(buf[p + 1:p + 1 + w], "big"), p + 1 + w
    if b in (0xD0, 0xD1, 0xD2, 0xD3):
        w = 1 << (b - 0xD0)
        return int.from_bytes(buf[p + 1:p + 1 + w], "big", signed=True), p + 1 + w
    if b in (0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
        n = 1 << (b - 0xD4)
        return MpExt(struct.unpack("b", buf[p + 1:p + 2])[0], buf[p + 2:p + 2 + n]), p + 2 + n
    if b in (0xC7, 0xC8, 0xC9):
        w = 1 << (b - 0xC7)
        n = int.from_bytes(buf[p + 1:p + 1 + w], "big")
        t = struct.unpack("b", buf[p + 1 + w:p + 2 + w])[0]
        return MpExt(t, buf[p + 2 + w:p + 2 + w + n]), p + 2 + w + n
    raise _Bad("malformed", "payload", f"invalid msgpack byte 0x{b:02x} at offset {p}")


def decode(buf: bytes) -> Any:
    """Precheck then decode one msgpack value, keeping str apart from bin
    (MpStr vs bytes) and maps as MpMap.  Raises JobRejected."""
    try:
        precheck(buf)
        return _decode_at(buf, 0)[0]
    except _Bad as e:
        raise JobRejected(e.field, e.reason, "payload: " + e.message) from None


# ---------------------------------------------------------------- fields

def _type_name(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if type(v) is MpStr:
        return "a string"
    if isinstance(v, bytes):
        return "binary"
    if isinstance(v, MpMap):
        return "a map"
    if isinstance(v, list):
        return "an array"
    return "an extension"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any, name: str) -> float:
    if _is_int(v) or isinstance(v, float):
        d = float(v)
    else:
        raise _Bad("wrong_type", name, f"{name}: must be a number, not {_type_name(v)}")
    if not math.isfinite(d):
        raise _Bad("bad_value", name, f"{name}: must be a finite number")
    return d


def id_valid(s: Union[str, bytes]) -> bool:
    """[A-Za-z0-9][A-Za-z0-9_.-]{0,63}: safe in a key, a label and a container name."""
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    if not 0 < len(b) <= ID_MAX or not (b[:1].isalnum() and b[0] < 0x80):
        return False
    return all(c < 0x80 and (chr(c).isalnum() or c in b"_.-") for c in b[1:])


def parse_size(s: str) -> int:
    """parse_size(): bytes, or a number with k, m, g or t (powers of 1024),
    optionally followed by b.  Raises ValueError with the C message."""
    if not s[:1].isdigit() or not s[:1].isascii():
        raise ValueError(f'"{s}" is not a size (bytes, or a number with k, m, g or t)')
    i = 0
    while i < len(s) and s[i].isdigit() and s[i].isascii():
        i += 1
    v = int(s[:i])
    if v > UINT64_MAX:
        raise ValueError(f'size "{s}" is too large')
    rest = s[i:]
    mult = 1
    if rest[:1].lower() in _SIZE_MULT:
        mult = _SIZE_MULT[rest[:1].lower()]
        rest = rest[1:]
        if rest[:1] in ("b", "B"):
            rest = rest[1:]
    if rest:
        raise ValueError(f'"{s}" is not a size (bytes, or a number with k, m, g or t)')
    if v > UINT64_MAX // mult:
        raise ValueError(f'size "{s}" is too large')
    return v * mult


def _path(o: MpMap, name: str, root: Optional[str]) -> str:
    """payload_path(): a path checked by its text alone; returns the relative form."""
    v = o.get(name)
    if not o.has(name):
        raise _Bad("missing_field", name, f"{name}: missing (a directory relative to builds_root)")
    if type(v) is not MpStr:
        raise _Bad("wrong_type", name, f"{name}: must be a string, not {_type_name(v)}")
    s = bytes(v)
    if not s:
        raise _Bad("bad_path", name, f"{name}: empty path")
    if len(s) > PATH_FIELD_MAX:
        raise _Bad("bad_path", name, f"{name}: longer than {PATH_FIELD_MAX} bytes")
    if b"\0" in s:
        raise _Bad("bad_path", name, f"{name}: contains a NUL byte")
    if b":" in s:
        raise _Bad("bad_path", name, f"{name}: contains ':', which a container volume cannot carry")
    if s[:1] == b"/":
        r = (root or "").encode("utf-8", "surrogateescape")
        while len(r) > 1 and r.endswith(b"/"):
            r = r[:-1]
        if not r or len(s) <= len(r) + 1 or not s.startswith(r) or s[len(r):len(r) + 1] != b"/":
            raise _Bad("bad_path", name, f'{name}: absolute path "{s[:200].decode(errors="replace")}" '
                       f'is outside builds_root')
        s = s[len(r):].lstrip(b"/")
        if not s:
            raise _Bad("bad_path", name, f"{name}: names builds_root itself, not a directory below it")
    for tok in s.split(b"/"):
        if tok == b"..":
            raise _Bad("bad_path", name, f'{name}: ".." is not allowed in a path')
        if len(tok) > NAME_MAX:
            raise _Bad("bad_path", name, f"{name}: a path component is longer than {NAME_MAX} bytes")
    return s.decode("utf-8", "surrogateescape")


def _profile(o: MpMap, lim: Limits) -> None:
    """payload_profile(): profile (a path) or profile_archive (a tar): exactly one."""
    has_p, has_a = o.has("profile"), o.has("profile_archive")
    if has_p and has_a:
        raise _Bad("bad_value", "profile", "profile, profile_archive: give exactly one of them")
    if not has_p and not has_a:
        raise _Bad("missing_field", "profile",
                   "profile: missing (a directory relative to builds_root, or give profile_archive)")
    if not has_a:
        _path(o, "profile", lim.builds_root)
        return
    v = o.get("profile_archive")
    if type(v) is not bytes:
        raise _Bad("wrong_type", "profile_archive",
                   f"profile_archive: must be binary (a tar archive), not {_type_name(v)}")
    if not v:
        raise _Bad("bad_archive", "profile_archive", "profile_archive: empty")


def _token(s: bytes) -> bool:
    """payload_token(): an HTTP header name (an RFC 9110 token)."""
    return bool(s) and all((c < 0x80 and chr(c).isalnum()) or c in _TOKEN_EXTRA for c in s)


def _upload(v: Any) -> None:
    """payload_upload(): {url: "http(s)://host/prefix/{name}", headers: {str: str}}.
    Header values may be credentials: messages name the header, never its value."""
    if not isinstance(v, MpMap):
        raise _Bad("wrong_type", "upload", f"upload: must be a map {{url, headers}}, not {_type_name(v)}")
    if not v.has("url"):
        raise _Bad("missing_field", "upload.url", "upload.url: missing")
    u = v.get("url")
    if type(u) is not MpStr:
        raise _Bad("wrong_type", "upload.url", f"upload.url: must be a string, not {_type_name(u)}")
    if len(u) > UPLOAD_URL_MAX:
        raise _Bad("bad_value", "upload.url", f"upload.url: longer than {UPLOAD_URL_MAX} bytes")
    if any(c <= 0x20 or c == 0x7F for c in u):
        raise _Bad("bad_value", "upload.url", "upload.url: contains a space or a control character")
    low = u.lower()
    if not ((len(u) > 7 and low.startswith(b"http://")) or (len(u) > 8 and low.startswith(b"https://"))):
        raise _Bad("bad_value", "upload.url", "upload.url: must be an http:// or https:// URL")
    # The build names its files: a name must never reach the host part.
    auth = u.index(b"://") + 3
    path = auth
    while path < len(u) and u[path] not in b"/?#":
        path += 1
    if path == auth:
        raise _Bad("bad_value", "upload.url", "upload.url: no host")
    hole = u.find(b"{name}")
    if 0 <= hole < path:
        raise _Bad("bad_value", "upload.url",
                   "upload.url: {name} may only stand in the path or the query, not the host")
    if hole < 0 and u[path:path + 1] != b"/":
        raise _Bad("bad_value", "upload.url", 'upload.url: without {name}, the URL is a prefix and needs a '
                   'path ("https://host/" at least)')
    h = v.get("headers")
    if h is None:
        return
    if not isinstance(h, MpMap):
        raise _Bad("wrong_type", "upload.headers", f"upload.headers: must be a map of strings, not {_type_name(h)}")
    if len(h) > UPLOAD_HEADERS_MAX:
        raise _Bad("over_limit", "upload.headers", f"upload.headers: more than {UPLOAD_HEADERS_MAX} headers")
    for k, val in h:
        if type(k) is not MpStr or not _token(bytes(k)) or len(k) >= 64:
            raise _Bad("bad_value", "upload.headers",
                       "upload.headers: a name is not an HTTP header name (a token of 1 to 63 bytes)")
        name = k.decode("ascii")
        if name.lower() in UPLOAD_OWN_HEADERS:
            raise _Bad("bad_value", "upload.headers", f"upload.headers: {name} is set by the worker")
        if type(val) is not MpStr:
            raise _Bad("wrong_type", "upload.headers",
                       f"upload.headers.{name}: must be a string, not {_type_name(val)}")
        if len(val) > UPLOAD_HEADER_MAX:
            raise _Bad("bad_value", "upload.headers",
                       f"upload.headers.{name}: longer than {UPLOAD_HEADER_MAX} bytes")
        if any((c < 0x20 and c != 0x09) or c == 0x7F for c in val):
            raise _Bad("bad_value", "upload.headers",
                       f"upload.headers.{name}: the value contains a control character")


def _fields(o: Any, lim: Limits) -> None:
    """payload_fields(): the checks of shared/payload.c, in its order."""
    if not isinstance(o, MpMap):
        raise _Bad("not_a_map", "payload", f"payload must be a msgpack map, not {_type_name(o)}")
    if not o.has("id"):
        raise _Bad("missing_field", "id", "id: missing")
    if sum(1 for k, _ in o if type(k) is MpStr and k == b"id") > 1:
        raise _Bad("bad_value", "id", "id: given more than once")
    v = o.get("id")
    if type(v) is not MpStr:
        raise _Bad("wrong_type", "id", f"id: must be a string, not {_type_name(v)}")
    if not id_valid(bytes(v)):
        raise _Bad("bad_id", "id", "id: must match [A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

    _profile(o, lim)
    if o.has("upload"):
        _upload(o.get("upload"))
    # Without output the worker makes one; only a job whose artifacts are uploaded may leave it out.
    if not o.has("output") and not o.has("upload"):
        raise _Bad("missing_field", "output", "output: missing (a directory relative to builds_root; "
                   "only a job with upload may leave it out)")
    if o.has("output"):
        _path(o, "output", lim.builds_root)

    if o.has("source_date_epoch"):
        v = o.get("source_date_epoch")
        if _is_int(v) and v < 0:
            raise _Bad("bad_value", "source_date_epoch", "source_date_epoch: must not be negative")
        if not _is_int(v):
            raise _Bad("wrong_type", "source_date_epoch",
                       f"source_date_epoch: must be an integer, not {_type_name(v)}")
        if v > EPOCH_MAX:
            raise _Bad("bad_value", "source_date_epoch", f"source_date_epoch: {v} is after the year 9999")
    if o.has("enqueued_at"):
        d = _number(o.get("enqueued_at"), "enqueued_at")
        if d < 0 or d > EPOCH_MAX:
            raise _Bad("bad_value", "enqueued_at", f"enqueued_at: {d:g} is not a time between 1970 and 9999")

    if o.has("memory"):
        v = o.get("memory")
        if _is_int(v) and v >= 0:
            mem = v
        elif _is_int(v):
            raise _Bad("bad_value", "memory", "memory: must not be negative")
        elif type(v) is MpStr:
            if len(v) >= 32:
                raise _Bad("bad_value", "memory", f'memory: "{v[:16].decode(errors="replace")}..." is not a size')
            if b"\0" in v:
                raise _Bad("bad_value", "memory", "memory: contains a NUL byte")
            try:
                mem = parse_size(v.decode("latin-1"))
            except ValueError as e:
                raise _Bad("bad_value", "memory", f"memory: {e}") from None
        else:
            raise _Bad("wrong_type", "memory", 'memory: must be bytes (integer) or a size string like '
                       f'"512m", not {_type_name(v)}')
        if mem < MIN_MEMORY:
            raise _Bad("bad_value", "memory", f"memory: {mem} bytes is below the minimum of 6m")
        if mem > lim.max_memory:
            raise _Bad("over_limit", "memory", f"memory: {mem} bytes is over this worker's "
                       f"max_memory of {lim.max_memory}")

    if o.has("cpus"):
        cpus = _number(o.get("cpus"), "cpus")
        if cpus < 0.01:
            raise _Bad("bad_value", "cpus", "cpus: must be at least 0.01")
        if cpus > lim.max_cpus:
            raise _Bad("over_limit", "cpus", f"cpus: {cpus:g} is over this worker's max_cpus of {lim.max_cpus:g}")

    timeout = lim.timeout
    if o.has("timeout"):
        timeout = _number(o.get("timeout"), "timeout")
        if timeout <= 0:
            raise _Bad("bad_value", "timeout", "timeout: must be above 0 seconds")
        if timeout > lim.max_timeout:
            raise _Bad("over_limit", "timeout", f"timeout: {timeout:g} s is over this worker's "
                       f"max_timeout of {lim.max_timeout:g} s")
    if o.has("warning"):
        warning = _number(o.get("warning"), "warning")
        if warning < 0:
            raise _Bad("bad_value", "warning", "warning: must not be negative")
        if warning > timeout:
            raise _Bad("bad_value", "warning", f"warning: {warning:g} s is after the timeout of {timeout:g} s")

    if o.has("retries"):
        v = o.get("retries")
        if not (_is_int(v) and v >= 0):
            raise _Bad("bad_value" if _is_int(v) else "wrong_type", "retries",
                       "retries: must be an integer from 0 to 10")
        if v > 10:
            raise _Bad("over_limit", "retries", f"retries: {v} is over the maximum of 10")

    if o.has("image"):
        v = o.get("image")
        if type(v) is not MpStr:
            raise _Bad("wrong_type", "image", f"image: must be a string, not {_type_name(v)}")
        img = v.decode("utf-8", "surrogateescape")
        if b"\0" in v or (lim.images is not None and img not in lim.images):
            raise _Bad("image_not_allowed", "image",
                       f'image: "{img[:100]}" is not one this worker allows')

    if o.has("meta"):
        v = o.get("meta")
        if not isinstance(v, MpMap):
            raise _Bad("wrong_type", "meta", f"meta: must be a map, not {_type_name(v)}")


def refusal(payload: bytes, limits: Optional[Limits] = None) -> Optional[JobRejected]:
    """The refusal a worker with these limits would give payload, or None."""
    lim = limits or Limits()
    if len(payload) > lim.max_payload:
        return JobRejected("payload", "payload_too_large",
                           f"payload of {len(payload)} bytes is over max_payload ({lim.max_payload})")
    try:
        precheck(payload)
        o = _decode_at(payload, 0)[0]
        _fields(o, lim)
    except _Bad as e:
        return JobRejected(e.field, e.reason, ("payload: " + e.message) if e.field == "payload"
                           and e.reason in ("malformed", "too_deep") else e.message)
    return None


def check_payload(payload: bytes, limits: Optional[Limits] = None) -> None:
    """Raise the JobRejected a worker's payload_decode() would refuse payload with."""
    r = refusal(payload, limits)
    if r is not None:
        raise r


def payload_id(payload: bytes) -> Optional[str]:
    """The valid id inside a payload, or None (as the worker's payload_id())."""
    try:
        precheck(payload)
        o = _decode_at(payload, 0)[0]
    except (_Bad, IndexError, struct.error):
        return None
    if not isinstance(o, MpMap):
        return None
    v = o.get("id")
    if type(v) is not MpStr or not id_valid(bytes(v)):
        return None
    return v.decode("ascii")


# ---------------------------------------------------------------- building

def new_id() -> str:
    """A fresh id as `enqueue submit` makes one: UTC date and time, 32 random bits."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def _rel_path(name: str, v: Any, lim: Limits) -> str:
    """A profile/output argument as the relative path the payload carries."""
    if isinstance(v, os.PathLike):
        v = os.fspath(v)
    if not isinstance(v, str):
        raise JobRejected(name, "wrong_type", f"{name}: must be a string, not {type(v).__name__}")
    if not v.startswith("/") or lim.builds_root is None:
        return v
    root = lim.builds_root.rstrip("/") or "/"
    if root == "/":
        rest = v.lstrip("/")
    elif v.startswith(root) and v[len(root):len(root) + 1] == "/":
        rest = v[len(root):].lstrip("/")
    else:
        raise JobRejected(name, "bad_path", f"{name}: {v} is not below builds_root {root}")
    if not rest:
        raise JobRejected(name, "bad_path", f"{name}: {v} is builds_root itself, not a directory below it")
    return rest


def _arg_number(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise JobRejected(name, "wrong_type", f"{name}: must be a number, not {type(v).__name__}")
    return float(v)


def _arg_int(name: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise JobRejected(name, "wrong_type", f"{name}: must be an integer, not {type(v).__name__}")
    return v


def _profile_fields(profile: Any, profile_dir: Any, profile_archive: Any,
                    lim: Limits) -> Tuple[str, Any]:
    """The one profile field: a path, or the archive (given, or packed from profile_dir)."""
    given = [n for n, v in (("profile", profile), ("profile_dir", profile_dir),
                            ("profile_archive", profile_archive)) if v is not None]
    if len(given) > 1:
        raise JobRejected(given[0], "bad_value", f"{', '.join(given)}: give exactly one of them")
    if not given:
        raise JobRejected("profile", "missing_field", "profile: missing (a directory relative to "
                          "builds_root; or give profile_dir or profile_archive)")
    if profile is not None:
        return "profile", _rel_path("profile", profile, lim)
    if profile_dir is not None:
        if not isinstance(profile_dir, (str, os.PathLike)):
            raise JobRejected("profile_dir", "wrong_type",
                              f"profile_dir: must be a path, not {type(profile_dir).__name__}")
        from .pack import pack_profile_dir
        return "profile_archive", pack_profile_dir(profile_dir)
    if not isinstance(profile_archive, (bytes, bytearray, memoryview)):
        raise JobRejected("profile_archive", "wrong_type",
                          f"profile_archive: must be bytes (a tar archive), not {type(profile_archive).__name__}")
    return "profile_archive", bytes(profile_archive)


def _upload_field(upload: Any, headers: Optional[Mapping[str, str]]) -> Optional[Dict[str, Any]]:
    """upload as payload_encode() writes it: {url, headers} (headers always a map)."""
    if upload is None:
        if headers:
            raise JobRejected("upload.headers", "bad_value", "upload.headers: given without upload")
        return None
    if not isinstance(upload, str):
        raise JobRejected("upload.url", "wrong_type", f"upload.url: must be a string, not {type(upload).__name__}")
    if headers is not None and not isinstance(headers, Mapping):
        raise JobRejected("upload.headers", "wrong_type",
                          f"upload.headers: must be a map of strings, not {type(headers).__name__}")
    return {"url": upload, "headers": dict(headers or {})}


def build_payload(profile: Any = None, output: Any = None, *, id: Optional[str] = None,
                  memory: Union[int, str, None] = None, cpus: Optional[float] = None,
                  timeout: Optional[float] = None, warning: Optional[float] = None,
                  image: Optional[str] = None, retries: int = 0,
                  meta: Optional[Mapping[str, Any]] = None,
                  source_date_epoch: Optional[int] = None, enqueued_at: Optional[float] = None,
                  profile_dir: Union[str, "os.PathLike[str]", None] = None,
                  profile_archive: Optional[bytes] = None, upload: Optional[str] = None,
                  upload_headers: Optional[Mapping[str, str]] = None,
                  limits: Optional[Limits] = None) -> Tuple[str, bytes]:
    """(id, payload): the job map `enqueue submit` builds (payload_encode()'s
    field order and types), checked with check_payload() before it is
    returned.  Limits not given are left out, so the worker's own defaults
    apply.  Exactly one of profile (a path on the workers), profile_dir (a
    local directory, packed as `enqueue submit --profile-dir` packs it) and
    profile_archive (a tar, optionally gzip'd or zstd'd) is given; output
    may be left out when upload (the URL each artifact is PUT to, with
    upload_headers on each PUT) is given.  Raises JobRejected naming the
    field."""
    lim = limits or Limits()
    if id is None:
        id = new_id()
    if not isinstance(id, str):
        raise JobRejected("id", "wrong_type", f"id: must be a string, not {type(id).__name__}")
    if not id_valid(id):
        raise JobRejected("id", "bad_id", f'id: "{id[:80]}" is not valid: it must match '
                          "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
    fields: List[Tuple[str, Any]] = [("id", id),
                                     _profile_fields(profile, profile_dir, profile_archive, lim)]
    up = _upload_field(upload, upload_headers)
    if output is not None:
        fields.append(("output", _rel_path("output", output, lim)))
    elif up is None:
        raise JobRejected("output", "missing_field", "output: missing (a directory relative to "
                          "builds_root; only a job with upload may leave it out)")
    if up is not None:
        fields.append(("upload", up))
    if memory is not None:
        if isinstance(memory, str):
            try:
                mem = parse_size(memory)
            except ValueError as e:
                raise JobRejected("memory", "bad_value", f"memory: {e}") from None
        else:
            mem = _arg_int("memory", memory)
            if mem < 0:
                raise JobRejected("memory", "bad_value", "memory: must not be negative")
        fields.append(("memory", mem))
    if cpus is not None:
        fields.append(("cpus", _arg_number("cpus", cpus)))
    if timeout is not None:
        fields.append(("timeout", _arg_number("timeout", timeout)))
    if warning is not None:
        fields.append(("warning", _arg_number("warning", warning)))
    epoch = int(time.time()) if source_date_epoch is None else _arg_int("source_date_epoch",
                                                                          source_date_epoch)
    fields.append(("source_date_epoch", epoch))
    now = time.time() if enqueued_at is None else _arg_number("enqueued_at", enqueued_at)
    if now > 0:
        fields.append(("enqueued_at", now))
    if image is not None:
        if not isinstance(image, str):
            raise JobRejected("image", "wrong_type", f"image: must be a string, not {type(image).__name__}")
        fields.append(("image", image))
    if _arg_int("retries", retries):
        fields.append(("retries", retries))
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise JobRejected("meta", "wrong_type", f"meta: must be a map, not {type(meta).__name__}")
        fields.append(("meta", dict(meta)))
    pk = msgpack.Packer(use_bin_type=True, use_single_float=False, strict_types=False)
    try:
        payload = pk.pack_map_header(len(fields)) + b"".join(
            pk.pack(k) + pk.pack(v) for k, v in fields)
    except (TypeError, ValueError, OverflowError) as e:
        field = "meta" if meta is not None else "upload.headers" if upload_headers else "payload"
        raise JobRejected(field, "wrong_type", f"{field}: cannot be packed as msgpack: {e}") from None
    check_payload(payload, lim)
    return id, payload


def images_tuple(images: Optional[Sequence[str]]) -> Optional[Tuple[str, ...]]:
    """Limits.images from any sequence (None stays None)."""
    return None if images is None else tuple(images)
