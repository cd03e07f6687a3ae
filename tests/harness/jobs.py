"""Jobs through Redis the way the backend and the clients see them:
submit, the result lists, the dead-letter list, a job's event stream, and
archiso-like profiles to build."""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Dict, List

import msgpack
import redis

from .env import REPO, SLOW
from .ini import StrPath
from .keys import nskey

SUBMIT_LUA = (REPO / "shared" / "lua" / "submit.lua").read_text()


def submit(r: "redis.Redis[bytes]", ns: str, **job: Any) -> str:
    """Enqueue a job the way the FastAPI backend does (redis-py + msgpack,
    through shared/lua/submit.lua as PROTOCOL.md says); returns its id."""
    job.setdefault("id", "t" + uuid.uuid4().hex[:12])
    job.setdefault("source_date_epoch", 1700000000)
    jid = job["id"]
    got = r.eval(SUBMIT_LUA, 4, nskey(ns, "job", jid), nskey(ns, "queue"), nskey(ns, "result", jid),
                 nskey(ns, "log", jid), msgpack.packb(job), f"{time.time():.6f}", "new")
    assert got[0] == b"ok", got
    return jid


def push_raw(r: "redis.Redis[bytes]", ns: str, payload: bytes) -> None:
    """LPUSH raw bytes (for hostile payloads)."""
    r.lpush(nskey(ns, "queue"), payload)


def wait_result(r: "redis.Redis[bytes]", ns: str, job_id: str, timeout: float = 60) -> Dict[str, Any]:
    """BLPOP the job's own result list; returns the decoded result."""
    got = r.blpop(nskey(ns, "result", job_id), timeout=int(timeout * SLOW))
    assert got is not None, f"no result for {job_id} within {timeout * SLOW}s"
    return msgpack.unpackb(got[1])


def results(r: "redis.Redis[bytes]", ns: str) -> List[Dict[str, Any]]:
    """Every result recorded in the namespace, newest first."""
    return [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "results"), 0, -1)]


def dead(r: "redis.Redis[bytes]", ns: str) -> List[Dict[str, Any]]:
    """The dead-letter list, newest first."""
    return [msgpack.unpackb(x) for x in r.lrange(nskey(ns, "dead"), 0, -1)]


def stream_events(r: "redis.Redis[bytes]", ns: str, job_id: str) -> List[Dict[str, Any]]:
    """The events of the job's stream, oldest first."""
    return [msgpack.unpackb(f[b"event"]) for _, f in r.xrange(nskey(ns, "log", job_id))]


def make_profile(root: StrPath, name: str, iso_name: str = "debatetest", **conf: Any) -> str:
    """An archiso-like profile dir; conf becomes test.conf for the stand-in mkarchiso."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "profiledef.sh").write_text(f'iso_name="{iso_name}"\niso_label="TEST"\n')
    (d / "packages.x86_64").write_text("base\nlinux\n")
    if conf:
        (d / "test.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    return name


def write_script(dirpath: StrPath, body: str, name: str = "build.sh") -> str:
    """An executable /bin/sh script dirpath/name running body (a build
    command for [sandbox] command, a fake runtime); returns its path."""
    p = Path(dirpath) / name
    p.write_text("#!/bin/sh\n" + body)
    p.chmod(0o755)
    return str(p)
