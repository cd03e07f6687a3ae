"""Hostile payloads: one real worker in exec mode takes a table of
payloads pushed raw onto {ns}:queue, refuses every one with the reason and
message PROTOCOL.md names, dead-letters the original bytes, never runs the
build for any of them, creates nothing outside builds_root, and goes on to
run the valid jobs queued right after them.

The table (CASES) is checked one case per test against a single run of the
worker (the module fixture `run`); the tests after it check the run as a
whole, and the last two start their own workers.
"""
import hashlib
import math
import os
import re
import struct
import time
import unicodedata
import uuid
from collections import Counter, namedtuple
from pathlib import Path

import msgpack
import pytest

from tests.harness import (SLOW, Fleet, RedisServer, dead, make_profile, nskey, push_raw, stream_events,
                           submit, wait_result)


MiB = 1 << 20


# ------------------------------------------------------------ building payloads

def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def mp_str(b):
    """A msgpack str holding exactly the bytes b (which need not be UTF-8)."""
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return b"\xd9" + bytes([n]) + b
    if n < 65536:
        return b"\xda" + struct.pack(">H", n) + b
    return b"\xdb" + struct.pack(">I", n) + b


def mp_map(pairs):
    """A msgpack map from (key, value) pairs of already-encoded bytes or
    Python objects; duplicate keys are kept, as a hostile producer may."""
    assert len(pairs) < 16
    out = bytes([0x80 | len(pairs)])
    for k, v in pairs:
        out += k if isinstance(k, bytes) else pack(k)
        out += v if isinstance(v, bytes) else pack(v)
    return out


OMIT = object()


def job(name, **fields):
    """A valid job named after its case, with fields replaced or (OMIT) removed."""
    d = {"id": "h-" + name, "profile": "p", "output": "out/" + name, "source_date_epoch": 1700000000}
    for k, v in fields.items():
        if v is OMIT:
            d.pop(k, None)
        else:
            d[k] = v
    return d


def nest(levels, leaf=1):
    """levels maps, one inside the other: {"a": {"a": ... leaf}}."""
    v = leaf
    for _ in range(levels):
        v = {"a": v}
    return v


Case = namedtuple("Case", "name build reason subs id")


def J(name, reason, subs, id_ok=True, **fields):
    """A case whose payload is job(name, **fields); a callable field value is
    given the run's context (paths known only at run time)."""
    def build(ctx):
        return pack(job(name, **{k: (v(ctx) if callable(v) else v) for k, v in fields.items()}))
    return Case(name, build, reason, (subs,) if isinstance(subs, str) else tuple(subs),
                ("h-" + name) if id_ok else None)


def R(name, payload, reason, subs, id=None):
    """A case with hand-built bytes (payload: bytes, or a function of the context)."""
    build = payload if callable(payload) else (lambda ctx: payload)
    return Case(name, build, reason, (subs,) if isinstance(subs, str) else tuple(subs), id)


def valid_bytes(name):
    return pack(job(name))


def padded_job(name, size, **fields):
    """A job padded through meta to exactly size bytes."""
    pad = 70000
    while True:
        b = pack(job(name, meta={"pad": "x" * pad}, **fields))
        if len(b) == size:
            return b
        pad += size - len(b)


# ext8 (0xc7) values: a timestamp96 and an application type; meta is "anything".
EXT_META = {"ts96": msgpack.Timestamp(-1, 5), "e8": msgpack.ExtType(1, b"abc"), "last": 1}

# No ':' in it: a path with one is refused before anything quotes the path,
# and these cases are about what path_resolve's messages quote.
OUTSIDE_LINE = "2099-01-01T00.00.00.000Z worker[1] warning refused a job h-forged bad_path forged"

# The table.  Every payload is distinct bytes, so its dead entry is found by
# its payload; `id` is the id the dead entry must carry (None: it must not).
CASES = [
    # ---- wrong types, every field
    J("id-int", "wrong_type", "id: must be a string", id_ok=False, id=7),
    J("id-nil", "wrong_type", "id: must be a string", id_ok=False, id=None),
    J("id-bin", "wrong_type", "id: must be a string", id_ok=False, id=b"h-id-bin"),
    J("id-list", "wrong_type", "id: must be a string", id_ok=False, id=["h-id-list"]),
    J("profile-list", "wrong_type", "profile: must be a string", profile=["p"]),
    J("profile-bin", "wrong_type", "profile: must be a string", profile=b"p"),
    J("profile-int", "wrong_type", "profile: must be a string", profile=3),
    J("output-map", "wrong_type", "output: must be a string", output={"a": 1}),
    J("output-nil", "wrong_type", "output: must be a string", output=None),
    J("memory-list", "wrong_type", "memory: must be bytes", memory=[1, 2]),
    J("memory-float", "wrong_type", "memory: must be bytes", memory=1.5e9),
    J("memory-bool", "wrong_type", "memory: must be bytes", memory=True),
    J("cpus-str", "wrong_type", "cpus: must be a number", cpus="four"),
    J("cpus-nil", "wrong_type", "cpus: must be a number", cpus=None),
    J("timeout-str", "wrong_type", "timeout: must be a number", timeout="60"),
    J("warning-bool", "wrong_type", "warning: must be a number", warning=True),
    J("image-int", "wrong_type", "image: must be a string", image=5),
    J("meta-list", "wrong_type", "meta: must be a map", meta=["a"]),
    J("meta-str", "wrong_type", "meta: must be a map", meta="{}"),
    J("retries-str", "wrong_type", "retries:", retries="3"),
    J("retries-float", "wrong_type", "retries:", retries=1.0),
    J("sde-float", "wrong_type", "source_date_epoch: must be an integer", source_date_epoch=1.7e9),
    J("sde-str", "wrong_type", "source_date_epoch: must be an integer", source_date_epoch="1700000000"),
    J("enq-str", "wrong_type", "enqueued_at: must be a number", enqueued_at="now"),
    # ---- missing fields
    J("no-id", "missing_field", "id: missing", id_ok=False, id=OMIT),
    J("no-profile", "missing_field", "profile: missing", profile=OMIT),
    J("no-output", "missing_field", "output: missing", output=OMIT),
    R("empty-map", pack({}), "missing_field", "id: missing"),
    # ---- ids that break the pattern (none may reach a key, a name or a label)
    J("id-dotdot", "bad_id", "id: must match", id_ok=False, id="../x"),
    J("id-shell", "bad_id", "id: must match", id_ok=False, id="a b;rm -rf /"),
    J("id-empty", "bad_id", "id: must match", id_ok=False, id=""),
    J("id-65", "bad_id", "id: must match", id_ok=False, id="a" * 65),
    J("id-dash", "bad_id", "id: must match", id_ok=False, id="-x"),
    J("id-dot", "bad_id", "id: must match", id_ok=False, id=".x"),
    J("id-slash", "bad_id", "id: must match", id_ok=False, id="x/y"),
    J("id-unicode", "bad_id", "id: must match", id_ok=False, id="caf\u00e9"),
    J("id-nul", "bad_id", "id: must match", id_ok=False, id="ab\x00cd"),
    J("id-newline", "bad_id", "id: must match", id_ok=False, id="ab\ncd"),
    J("id-brace", "bad_id", "id: must match", id_ok=False, id="x}:queue"),
    # Two ids: C would read the first, the reaper's Lua the last; refused outright.
    R("id-dup-first-bad", mp_map([("id", "../dup"), ("profile", "p"), ("output", "o"), ("id", "h-dup-ok")]),
      "bad_value", "id: given more than once"),
    R("id-dup-both-ok", mp_map([("id", "h-dup-a"), ("profile", "p"), ("output", "o"), ("id", "h-dup-b")]),
      "bad_value", "id: given more than once"),
    J("path-colon", "bad_path", ("profile:", "':'"), profile="p:/etc"),
    # ---- traversal and absolute paths
    J("trav-dotdot", "bad_path", ("profile:", ".."), profile="p/../p"),
    J("trav-dotdot-etc", "bad_path", ("profile:", ".."), profile="../etc"),
    J("trav-mid", "bad_path", ("profile:", ".."), profile="a/../../b"),
    J("trav-abs-etc", "bad_path", ("profile:", "outside builds_root"), profile="/etc"),
    J("trav-abs-out", "bad_path", ("profile:", "outside builds_root"),
      profile=lambda c: str(c["outside"] / "prof")),
    J("trav-abs-sibling", "bad_path", ("profile:", "outside builds_root"),
      profile=lambda c: str(c["broot"]) + "-evil/p"),
    J("trav-abs-dotdot", "bad_path", ("profile:", ".."),
      profile=lambda c: str(c["broot"]) + "/../outside/prof"),
    J("trav-root", "bad_path", "profile:", profile=lambda c: str(c["broot"])),
    J("trav-root-slash", "bad_path", "profile:", profile=lambda c: str(c["broot"]) + "/"),
    J("trav-root-slashes", "bad_path", ("profile:", "builds_root itself"),
      profile=lambda c: str(c["broot"]) + "//"),
    J("trav-dot", "bad_path", ("profile:", "builds_root itself"), profile="."),
    J("trav-empty", "bad_path", ("profile:", "empty"), profile=""),
    J("out-dotdot", "bad_path", ("output:", ".."), output="../escape"),
    J("out-abs-out", "bad_path", ("output:", "outside builds_root"),
      output=lambda c: str(c["outside"] / "new-abs")),
    J("out-abs-etc", "bad_path", ("output:", "outside builds_root"), output="/etc/debate-hostile-probe"),
    J("out-empty", "bad_path", ("output:", "empty"), output=""),
    J("out-root", "bad_path", ("output:", "builds_root itself"), output="./."),
    # ---- symlinks inside builds_root that lead out (or back to the root)
    J("sym-abs", "bad_path", ("profile:", "outside builds_root"), profile="abs_link"),
    J("sym-rel", "bad_path", ("profile:", "outside builds_root"), profile="rel_link"),
    J("sym-abs-deeper", "bad_path", ("profile:", "outside builds_root"), profile="abs_link/prof"),
    J("sym-mid-rel", "bad_path", ("profile:", "outside builds_root"), profile="d1/up/prof"),
    J("sym-chain", "bad_path", ("profile:", "outside builds_root"), profile="chain1/prof"),
    J("sym-root", "bad_path", ("profile:", "root_link"), profile="root_link"),
    J("sym-out-abs", "bad_path", "output:", output="abs_link/new-a"),
    J("sym-out-rel", "bad_path", "output:", output="rel_link/new-r"),
    J("sym-out-mid", "bad_path", "output:", output="d1/up/new-m/deeper"),
    J("sym-out-link", "bad_path", "output:", output="abs_link"),
    J("sym-out-dangle", "bad_path", "output:", output="dangle_link"),
    J("sym-out-dangle-sub", "bad_path", "output:", output="dangle_link/x"),
    J("sym-out-fresh-then-link", "bad_path", "output:", output="d1/up"),
    # A symlink that stays inside is refused too: it could lead outside a moment later.
    J("sym-inside", "bad_path", ("profile:", '"in_link" is a symlink'), profile="in_link"),
    J("sym-inside-out", "bad_path", ("output:", '"in_link" is a symlink'), output="in_link/o"),
    # ---- the profile must exist and be a directory, the output a directory
    J("prof-missing", "bad_path", ("profile:", "nope"), profile="nope"),
    J("prof-file", "bad_path", ("profile:", "not a directory"), profile="afile"),
    J("out-file", "bad_path", ("output:", "not a directory"), output="afile"),
    J("out-under-file", "bad_path", "output:", output="afile/sub"),
    # ---- NUL bytes and lengths
    J("nul-profile", "bad_path", ("profile:", "NUL"), profile="p\x00/../../etc"),
    J("nul-output", "bad_path", ("output:", "NUL"), output="o\x00x"),
    J("long-2000", "bad_path", ("profile:", "1024"), profile="a/" * 1000),
    J("long-1025", "bad_path", ("output:", "1024"), output=("d" * 200 + "/") * 5 + "x" * 20),
    J("long-component", "bad_path", ("profile:", "255"), profile="p/" + "c" * 300),
    J("long-component-out", "bad_path", ("output:", "255"), output="c" * 256),
    # ---- huge numbers
    J("mem-u64max", "over_limit", ("memory:", "max_memory"), memory=2**64 - 1),
    J("mem-17g", "over_limit", ("memory:", "max_memory"), memory="17g"),
    J("cpus-1e308", "over_limit", ("cpus:", "max_cpus"), cpus=1e308),
    J("cpus-17", "over_limit", ("cpus:", "max_cpus"), cpus=17),
    J("timeout-1e12", "over_limit", ("timeout:", "max_timeout"), timeout=1e12),
    J("timeout-max-plus", "over_limit", ("timeout:", "max_timeout"), timeout=4 * 3600 + 1),
    J("retries-11", "over_limit", ("retries:", "10"), retries=11),
    J("retries-u64max", "over_limit", ("retries:", "10"), retries=2**64 - 1),
    # ---- negative and zero limits, NaN and infinities
    J("mem-neg", "bad_value", "memory:", memory=-1),
    J("mem-i64min", "bad_value", "memory:", memory=-2**63),
    J("cpus-neg", "bad_value", "cpus:", cpus=-2),
    J("timeout-neg", "bad_value", "timeout:", timeout=-5),
    J("warning-neg", "bad_value", "warning:", warning=-1),
    J("retries-neg", "bad_value", "retries:", retries=-1),
    J("sde-neg", "bad_value", "source_date_epoch:", source_date_epoch=-1),
    J("sde-huge", "bad_value", ("source_date_epoch:", "9999"), source_date_epoch=2**63),
    J("enq-neg", "bad_value", "enqueued_at:", enqueued_at=-1.5),
    J("enq-nan", "bad_value", "enqueued_at:", enqueued_at=math.nan),
    J("mem-zero", "bad_value", "memory:", memory=0),
    J("mem-zero-str", "bad_value", "memory:", memory="0"),
    J("mem-below-min", "bad_value", ("memory:", "6m"), memory="5m"),
    J("cpus-zero", "bad_value", "cpus:", cpus=0),
    J("cpus-tiny", "bad_value", "cpus:", cpus=1e-300),
    J("timeout-zero", "bad_value", "timeout:", timeout=0),
    J("cpus-nan", "bad_value", ("cpus:", "finite"), cpus=math.nan),
    J("cpus-inf", "bad_value", ("cpus:", "finite"), cpus=math.inf),
    J("cpus-neg-inf", "bad_value", ("cpus:", "finite"), cpus=-math.inf),
    J("timeout-nan", "bad_value", ("timeout:", "finite"), timeout=math.nan),
    J("warning-inf", "bad_value", ("warning:", "finite"), warning=math.inf),
    J("warning-after-timeout", "bad_value", ("warning:", "timeout"), timeout=10, warning=20),
    # ---- memory strings
    J("mem-12q", "bad_value", ("memory:", "12q"), memory="12q"),
    J("mem-1.5g", "bad_value", ("memory:", "1.5g"), memory="1.5g"),
    J("mem-neg-str", "bad_value", ("memory:", "-1m"), memory="-1m"),
    J("mem-empty-str", "bad_value", "memory:", memory=""),
    J("mem-nul-str", "bad_value", "memory:", memory="1\x00g"),
    J("mem-long-str", "bad_value", "memory:", memory="9" * 40),
    J("mem-space-str", "bad_value", "memory:", memory=" 8g"),
    # ---- images off the allow list
    J("image-unknown", "image_not_allowed", ("image:", "evil/image:latest"), image="evil/image:latest"),
    J("image-empty", "image_not_allowed", "image:", image=""),
    J("image-nul", "image_not_allowed", "image:", image="localhost/debate-archiso:latest\x00evil"),
    J("image-prefix", "image_not_allowed", "image:", image="localhost/debate-archiso:latest "),
    # ---- malformed msgpack
    R("trunc-1", valid_bytes("trunc-1")[:1], "malformed", ("payload:", "announces")),
    R("trunc-5", valid_bytes("trunc-5")[:5], "malformed", ("payload:", "announces")),
    R("trunc-half", valid_bytes("trunc-half")[:len(valid_bytes("trunc-half")) // 2], "malformed",
      ("payload:", "truncated")),
    R("trunc-last", valid_bytes("trunc-last")[:-1], "malformed", ("payload:", "truncated")),
    R("trunc-in-str", valid_bytes("trunc-in-str")[:12], "malformed", ("payload:", "truncated")),
    R("trailing-garbage", valid_bytes("trailing-garbage") + b"\x00garbage", "malformed",
      ("payload:", "trailing")),
    R("two-objects", valid_bytes("two-objects") + valid_bytes("two-objects-b"), "malformed",
      ("payload:", "trailing")),
    R("byte-c1", b"\xc1", "malformed", ("payload:", "0xc1")),
    R("byte-c1-inside", mp_map([("id", "h-c1"), ("profile", b"\xc1"), ("output", "o")]), "malformed",
      ("payload:", "0xc1")),
    R("array32-4g", b"\xdd\xff\xff\xff\xff" + b"\x01" * 5, "malformed", ("payload:", "4294967295")),
    R("map32-4g", b"\xdf\xff\xff\xff\xff" + b"\x01" * 5, "malformed", ("payload:", "elements")),
    R("map16-lies", b"\xde\xff\xff" + pack("id") + pack("h-x"), "malformed", "payload:"),
    R("str32-4g", b"\xdb\xff\xff\xff\xff" + b"x" * 5, "malformed", ("payload:", "truncated")),
    R("bin32-4g", b"\xc6\xff\xff\xff\xff" + b"x" * 5, "malformed", ("payload:", "truncated")),
    R("ext32-4g", b"\xc9\xff\xff\xff\xff\x01" + b"x" * 4, "malformed", ("payload:", "truncated")),
    R("empty", b"", "malformed", "payload:"),
    # ---- not a map at the top
    R("top-array", pack([1, 2]), "not_a_map", ("map", "an array")),
    R("top-array-of-job", pack([job("in-array")]), "not_a_map", ("map", "an array")),
    R("top-str", pack("hello"), "not_a_map", ("map", "a string")),
    R("top-int", pack(42), "not_a_map", ("map", "an integer")),
    R("top-nil", pack(None), "not_a_map", ("map", "nil")),
    R("top-bin", pack(b"\x00\x01"), "not_a_map", ("map", "binary")),
    R("top-bool", pack(True), "not_a_map", ("map", "a boolean")),
    R("top-float", pack(1.5), "not_a_map", ("map", "a float")),
    R("top-ext", msgpack.packb(msgpack.ExtType(5, b"xyz")), "not_a_map", "map"),
    # ---- nesting
    J("deep-meta-30", "too_deep", ("payload:", "nested deeper than 16"), id_ok=False, meta=nest(30)),
    J("deep-meta-17", "too_deep", ("payload:", "nested deeper than 16"), id_ok=False, meta=nest(15)),
    R("deep-array-1000", b"\x91" * 1000 + b"\x01", "too_deep", ("payload:", "nested deeper")),
    # ---- size
    R("blob-10m", b"\xc6" + struct.pack(">I", 10 * MiB) + os.urandom(10 * MiB), "payload_too_large",
      ("payload", "max_payload")),
    R("job-1m-plus-1", lambda c: padded_job("job-1m-plus-1", MiB + 1), "payload_too_large",
      ("payload", "max_payload")),
    # ---- payload text that must not corrupt the dead entry or the log
    J("abs-utf8-cut", "bad_path", ("profile:", "outside builds_root"), profile="/" + "\u00e9" * 150),
    J("image-utf8-cut", "image_not_allowed", "image:", image="x" + "\u00fc" * 60),
    J("missing-utf8-cut", "bad_path", "profile:", profile="\u00fc" * 120),
    R("abs-not-utf8", mp_map([("id", "h-abs-not-utf8"), ("profile", mp_str(b"/\xff\xfe/etc")), ("output", "o")]),
      "bad_path", ("profile:", "outside builds_root"), id="h-abs-not-utf8"),
    R("image-not-utf8", mp_map([("id", "h-image-not-utf8"), ("profile", "p"), ("output", "o"),
                                ("image", mp_str(b"evil\xc3"))]),
      "image_not_allowed", "image:", id="h-image-not-utf8"),
    J("log-forge", "bad_path", ("profile:", "outside builds_root"), profile="/etc\n" + OUTSIDE_LINE),
    J("log-forge-mem", "bad_value", "memory:", memory="x\r\n" + OUTSIDE_LINE[:20]),
    J("log-forge-rel", "bad_path", ("profile:", "nope"), profile="nope\n" + OUTSIDE_LINE),
    J("log-forge-out", "bad_path", ("output:", "afile"), output="afile/\x1b[2J\n" + OUTSIDE_LINE),
    J("log-forge-c1", "bad_path", ("profile:", "nope"), profile="nope\u0085\u2028" + OUTSIDE_LINE),
    R("rel-not-utf8", mp_map([("id", "h-rel-not-utf8"), ("profile", mp_str(b"nope\xff\xc3(")), ("output", "o")]),
      "bad_path", ("profile:", "nope"), id="h-rel-not-utf8"),
    J("rel-utf8-cut", "bad_path", "output:", output="afile/" + "\u00e9" * 127 + "x"),
    J("rel-utf8-cut2", "bad_path", "output:", output="afile/" + "\u00e9" * 126 + "xy"),
]

CASE_IDS = [c.name for c in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


# ------------------------------------------------------------ the one run

def tree(d):
    """Everything under d (symlinks not followed): path -> (kind, size, mtime)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(d):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = p.lstat()
            out[str(p.relative_to(d))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    st = Path(d).lstat()
    out["."] = (st.st_mode, st.st_mtime_ns)
    return out


def marker_script(path, marker):
    """The build: record that it ran, under the job id, and do nothing else."""
    path.write_text("#!/bin/sh\n"
                    f"printf '%s\\n' \"$DEBATE_JOB_ID\" >> '{marker}/runs.log'\n"
                    f": > '{marker}/'\"$DEBATE_JOB_ID\"\n"
                    "echo ran\n")
    path.chmod(0o755)
    return str(path)


def decode_dead(raw):
    """A dead entry as a strict consumer reads it; (entry, error)."""
    try:
        return msgpack.unpackb(raw, raw=False), None
    except Exception as e:  # noqa: BLE001
        return msgpack.unpackb(raw, raw=True), f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    ns = "t" + uuid.uuid4().hex[:10]
    broot = tmp / "builds"
    broot.mkdir()
    outside = tmp / "outside"
    make_profile(outside, "prof")
    (outside / "keep").write_text("keep\n")
    make_profile(broot, "p")
    (broot / "afile").write_text("a file, not a directory\n")
    os.symlink(str(outside), broot / "abs_link")
    os.symlink("../outside", broot / "rel_link")
    (broot / "d1").mkdir()
    os.symlink("../../outside", broot / "d1" / "up")
    os.symlink("chain2", broot / "chain1")
    os.symlink(str(outside), broot / "chain2")
    os.symlink(str(outside / "notyet"), broot / "dangle_link")
    os.symlink(".", broot / "root_link")
    os.symlink("p", broot / "in_link")
    sibling = tmp / "builds-evil"
    make_profile(sibling, "p")
    marker = tmp / "marker"
    marker.mkdir()
    script = marker_script(tmp / "build.sh", marker)
    ctx = {"broot": broot, "outside": outside}

    payloads = [(c, c.build(ctx)) for c in CASES]
    assert len({p for _, p in payloads}) == len(payloads), "two cases share their bytes"

    # The valid jobs queued after the hostile ones: boundaries the rules accept.
    long_out = ("d" * 200 + "/") * 5 + "x" * 19
    assert len(long_out) == 1024
    valid = [
        {"id": "ok-plain", "profile": "p", "output": "out/ok-plain"},
        {"id": "ok-abs", "profile": str(broot / "p"), "output": str(broot) + "/out/ok-abs"},
        {"id": "ok-ext", "profile": "p", "output": "out/ok-ext", "enqueued_at": 1700000000.5,
         "meta": EXT_META},
        {"id": "ok-meta-16", "profile": "p", "output": "out/ok-meta-16", "meta": nest(14)},
        {"id": "I" * 64, "profile": "p", "output": "out/ok-id-64"},
        {"id": "ok-long-output", "profile": "p", "output": long_out},
        {"id": "ok-bounds", "profile": "./p/", "output": "out//ok-bounds/.", "memory": "6m", "cpus": 16,
         "timeout": 4 * 3600, "warning": 4 * 3600, "retries": 10, "source_date_epoch": 253402300799,
         "image": "localhost/debate-archiso:latest", "unknown": ["ignored"]},
    ]
    one_mib = padded_job("ok-1mib", MiB, id="ok-1mib")
    assert len(one_mib) == MiB

    before = {"outside": tree(outside), "sibling": tree(sibling), "top": sorted(os.listdir(tmp))}
    srv = RedisServer(tmp / "redis").start()
    fl = Fleet(tmp, srv.url, ns, broot)
    try:
        r = srv.client()
        w = fl.start(sandbox={"runtime": "exec", "command": script})
        wid = w.wait_log(r"worker (\S+) ").group(1)
        t0 = time.time()
        for _, p in payloads:
            push_raw(r, ns, p)
        ids = [submit(r, ns, **j) for j in valid]
        r.hset(nskey(ns, "job", "ok-1mib"), mapping={"state": "queued"})
        push_raw(r, ns, one_mib)
        ids.append("ok-1mib")
        res = {}
        for i in ids:   # a missing result fails its own test below, not the whole run
            try:
                res[i] = wait_result(r, ns, i, 60 if not res or all(res.values()) else 5)
            except AssertionError as e:
                res[i] = None
                print(e)
        deadline = time.time() + 30 * SLOW
        while r.llen(nskey(ns, "dead")) < len(CASES) and time.time() < deadline:
            time.sleep(0.05)
        took = time.time() - t0
        entries = [decode_dead(x) for x in r.lrange(nskey(ns, "dead"), 0, -1)]
        by_payload = {}
        by_sha256 = {hashlib.sha256(p).hexdigest(): p for _, p in payloads}
        for e, err in entries:
            p = e.get("payload", e.get(b"payload"))
            if p is None and "payload_sha256" in e:     # over max_payload: only its hashes kept
                p = by_sha256.get(e["payload_sha256"])
            by_payload.setdefault(p, []).append((e, err))
        hb = r.hgetall(nskey(ns, "worker", wid))
        yield {
            "r": r, "ns": ns, "w": w, "wid": wid, "broot": broot, "outside": outside, "tmp": tmp,
            "sibling": sibling, "marker": marker, "payloads": payloads, "entries": entries,
            "by_payload": by_payload, "results": res, "valid_ids": ids, "before": before,
            "took": took, "heartbeat": hb, "alive": w.alive(), "pid": w.pid,
        }
    finally:
        fl.close()
        srv.stop()


# ------------------------------------------------------------ the table, case by case

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hostile_payload(run, case):
    r, ns = run["r"], run["ns"]
    payload = dict((c.name, p) for c, p in run["payloads"])[case.name]
    got = run["by_payload"].get(payload, [])
    assert len(got) == 1, f"{len(got)} dead entries carry this payload (want exactly 1)"
    d, decode_err = got[0]
    assert decode_err is None, f"the dead entry is not valid msgpack for a strict reader: {decode_err}: {d!r}"
    assert d["reason"] == case.reason, d
    for s in case.subs:
        assert s in d["error"], f"error {d['error']!r} does not contain {s!r}"
    if case.reason == "payload_too_large":
        # the entry keeps the payload's length, sha256 and first 256 bytes, not the bytes
        assert d["payload_len"] == len(payload) and d["payload_prefix"] == payload[:256]
        assert d["payload_sha256"] == hashlib.sha256(payload).hexdigest()
        fields = {"reason", "error", "payload_len", "payload_sha256", "payload_prefix", "worker", "ts"}
    else:
        assert isinstance(d["payload"], bytes) and d["payload"] == payload
        fields = {"reason", "error", "payload", "worker", "ts"}
    assert d["worker"] == run["wid"] and isinstance(d["ts"], float)
    # printable text only: a message may not carry control bytes or line breaks into logs
    assert not [ch for ch in d["error"] if unicodedata.category(ch) in ("Cc", "Zl", "Zp")], repr(d["error"])
    if case.id is None:
        assert "id" not in d, d
        assert set(d) == fields
    else:
        assert d.get("id") == case.id
        assert set(d) == fields | {"id"}
        h = r.hgetall(nskey(ns, "job", case.id))
        assert h[b"state"] == b"dead", h
        assert h[b"error"].decode() == d["error"]
        assert h[b"worker"].decode() == run["wid"]
        evs = stream_events(r, ns, case.id)
        assert [e["type"] for e in evs] == ["dead"], evs
        assert evs[0]["reason"] == case.reason and evs[0]["error"] == d["error"] and evs[0]["id"] == case.id


# ------------------------------------------------------------ the run as a whole

def test_table_is_big_enough():
    counts = Counter(c.reason for c in CASES)
    assert len(CASES) >= 45
    for reason in ("payload_too_large", "malformed", "too_deep", "not_a_map", "missing_field", "wrong_type",
                   "bad_value", "bad_id", "bad_path", "image_not_allowed", "over_limit"):
        assert counts[reason] >= 1, reason


def test_every_payload_dead_lettered_once_and_nothing_else(run):
    r, ns = run["r"], run["ns"]
    assert len(run["entries"]) == len(CASES)
    assert sorted(run["by_payload"]) == sorted(p for _, p in run["payloads"])
    assert r.llen(nskey(ns, "queue")) == 0
    assert r.llen(nskey(ns, "active", run['wid'])) == 0
    assert r.zcard(nskey(ns, "delayed")) == 0
    # Job hashes exist only for the ids that were valid, and for the valid jobs.
    want = {c.id for c in CASES if c.id} | set(run["valid_ids"])
    have = {k.decode().split(":job:", 1)[1] for k in r.scan_iter(nskey(ns, "job", "*"))}
    assert have == want


def test_worker_stayed_up(run):
    w = run["w"]
    assert run["alive"] and w.alive()
    assert w.pid == run["pid"]
    assert run["heartbeat"][b"pid"] == str(w.pid).encode()
    assert len(re.findall(r"worker \S+ \S+: \d+ slot", w.log())) == 1, "the worker started more than once"
    assert not re.search(r"(?i)\b(fatal|abort|assert|segfault|sanitizer)\b", w.log())


def test_each_refusal_logged_once(run):
    log = run["w"].log()
    lines = [ln for ln in log.split("\n") if "refused a job" in ln]   # the log's lines end in \n
    assert len(lines) == len(CASES), "\n".join(lines)
    for c in CASES:
        if c.id:
            assert sum(f"refused a job {c.id}: {c.reason}:" in ln for ln in lines) == 1, c.name
    assert Counter(re.search(r"refused a job(?: \S+)?: (\w+):", ln).group(1) for ln in lines) == \
        Counter(c.reason for c in CASES)


def test_valid_jobs_after_the_hostile_ones_run(run):
    broot = Path(os.path.realpath(run["broot"]))
    for i, res in run["results"].items():
        assert res is not None, f"no result for {i}:\n{run['w'].log()[-3000:]}"
        assert res["status"] == "succeeded" and res["exit_code"] == 0, res
        assert "ran" in res["log_tail"]
    assert run["results"]["ok-meta-16"]["meta"] == nest(14)
    assert run["results"]["ok-ext"]["meta"] == EXT_META
    assert len(run["results"]["ok-1mib"]["meta"]["pad"]) > 1000000
    assert (broot / "out" / "ok-abs").is_dir() and (broot / "out" / "ok-bounds").is_dir()


def test_build_never_ran_for_a_hostile_payload(run):
    marker = run["marker"]
    ran = (marker / "runs.log").read_text().split("\n")[:-1]
    assert sorted(ran) == sorted(run["valid_ids"])
    assert sorted(os.listdir(marker)) == sorted(run["valid_ids"] + ["runs.log"])


def test_nothing_created_outside_builds_root(run):
    tmp, before = run["tmp"], run["before"]
    assert tree(run["outside"]) == before["outside"]
    assert tree(run["sibling"]) == before["sibling"]
    assert not (run["outside"] / "notyet").exists() and not (run["outside"] / "new-a").exists()
    assert not os.path.lexists("/etc/debate-hostile-probe")
    # nothing new next to builds_root but what the harness itself made
    new = set(os.listdir(tmp)) - set(before["top"])
    assert all(n == "redis" or n.startswith("worker-") for n in new), new
    assert not (tmp / "escape").exists()


def test_report_counts(run, capsys):
    counts = Counter(c.reason for c in CASES)
    with capsys.disabled():
        print(f"\n{len(CASES)} hostile payloads, {len(run['valid_ids'])} valid jobs after them, "
              f"{run['took']:.1f}s: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))


# ------------------------------------------------------------ a hostile duplicate of a running job

def test_hostile_duplicate_of_running_job_leaves_it_alone(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    go, started = tmp_path / "go", tmp_path / "started"
    cmd = tmp_path / "build.sh"
    cmd.write_text("#!/bin/sh\n"
                   f": > '{started}'\n"
                   f"i=0; while [ ! -e '{go}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done\n"
                   "echo finished\n")
    cmd.chmod(0o755)
    w = fleet.start(sandbox={"runtime": "exec", "command": str(cmd)}, worker={"concurrency": 2})
    jid = submit(r, ns, profile="p", output="o/coll", id="coll-1")
    deadline = time.time() + 20 * SLOW
    while not started.exists() and time.time() < deadline:
        time.sleep(0.02)
    assert started.exists(), w.log()
    before = r.hgetall(nskey(ns, "job", jid))
    assert before[b"state"] == b"running"

    hostile = [pack({"id": jid, "profile": "../etc", "output": "o"}),
               pack({"id": jid, "profile": "p", "output": "o", "memory": "1.5g"}),
               pack({"id": jid, "profile": "p", "output": "o", "image": "evil:latest"})]
    for p in hostile:
        push_raw(r, ns, p)
    deadline = time.time() + 20 * SLOW
    while r.llen(nskey(ns, "dead")) < len(hostile) and time.time() < deadline:
        time.sleep(0.02)
    d = dead(r, ns)
    assert sorted(x["payload"] for x in d) == sorted(hostile)
    assert {x["reason"] for x in d} == {"bad_path", "bad_value", "image_not_allowed"}
    assert all(x["id"] == jid for x in d)
    during = r.hgetall(nskey(ns, "job", jid))
    assert during == before, "a refused duplicate changed the running job's hash"
    assert "dead" not in [e["type"] for e in stream_events(r, ns, jid)]

    go.write_text("")
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "succeeded" and res["attempt"] == 1
    h = r.hgetall(nskey(ns, "job", jid))
    assert h[b"state"] == b"succeeded" and h[b"error"] == b""
    assert "dead" not in [e["type"] for e in stream_events(r, ns, jid)]
    assert r.llen(nskey(ns, "results")) == 1
    assert w.alive()


# ------------------------------------------------------------ job data never reaches a shell

# Valid by the path rules (only "..", NUL, length and where it leads are
# refused), so these must reach the build as exact strings, untouched.
SHELLY_PROFILE = "p;echo pwned>x $(touch PWN1) `touch PWN2` 'q\" |touch PWN3& <in >out *?[a] ~ \\ $HOME\t\n;touch PWN4"
SHELLY_OUTPUT = "o;touch PWN5/$(touch PWN6)"


def test_job_data_never_reaches_a_shell(fleet, r, ns, broot, tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # the worker's (and so the build's) working directory
    monkeypatch.setenv("HOSTILE_WORKER_SECRET", "not-for-builds")
    make_profile(broot, SHELLY_PROFILE)
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = tmp_path / "build.sh"
    cmd.write_text("#!/bin/sh\n"
                   f"printf '%s\\0' \"$@\" > '{marks}/args'\n"
                   f"env -0 > '{marks}/env'\n"
                   "echo \"argc=$#\"\n")
    cmd.chmod(0o755)
    w = fleet.start(sandbox={"runtime": "exec", "command": f"{cmd} --literal $HOME $(id) x;y"})
    meta = {"cmd": "$(touch PWN7)", "q": "'\";|&"}
    jid = submit(r, ns, id="a-b.c_d", profile=SHELLY_PROFILE, output=SHELLY_OUTPUT, meta=meta,
                 env={"LD_PRELOAD": "/tmp/evil.so"}, LD_PRELOAD="/tmp/evil.so")
    res = wait_result(r, ns, jid, 20)
    assert res["status"] == "succeeded", res
    assert res["meta"] == meta and res["id"] == "a-b.c_d"
    assert "argc=4" in res["log_tail"]

    args = (marks / "args").read_bytes().split(b"\0")[:-1]
    assert args == [b"--literal", b"$HOME", b"$(id)", b"x;y"]
    env = dict(kv.split(b"=", 1) for kv in (marks / "env").read_bytes().split(b"\0") if kv)
    root = os.path.realpath(broot).encode()
    assert env[b"DEBATE_JOB_ID"] == b"a-b.c_d"
    assert env[b"DEBATE_PROFILE"] == root + b"/" + SHELLY_PROFILE.encode()
    assert env[b"DEBATE_OUTPUT"] == root + b"/" + SHELLY_OUTPUT.encode()
    assert os.path.isdir(env[b"DEBATE_OUTPUT"])
    assert env[b"SOURCE_DATE_EPOCH"] == b"1700000000" and env[b"LC_ALL"] == b"C" and env[b"TZ"] == b"UTC"
    assert b"LD_PRELOAD" not in env and b"HOSTILE_WORKER_SECRET" not in env
    allowed = {b"PATH", b"HOME", b"USER", b"LANG", b"SOURCE_DATE_EPOCH", b"LC_ALL", b"TZ", b"DEBATE_JOB_ID",
               b"DEBATE_PROFILE", b"DEBATE_OUTPUT", b"DEBATE_MEMORY", b"PWD", b"OLDPWD", b"SHLVL", b"_"}
    assert set(env) <= allowed, set(env) - allowed

    # Nothing a shell would have made: no PWN files, no "x", "pwned", "in", "out".
    made = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        for n in dirnames + filenames:
            if n in {"x", "pwned", "in", "out", "id"} or n.startswith("PWN"):
                made.append(os.path.join(dirpath, n))
    assert made == []
    assert os.listdir(cwd) == []
    assert w.alive()
