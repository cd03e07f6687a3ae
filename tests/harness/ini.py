"""worker.ini files: sections as {section: {key: value}}, merged in layers,
written in the format shared/config.c reads."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

Sections = Dict[str, Dict[str, Any]]
StrPath = Union[str, "os.PathLike[str]"]

# [worker] keys for tests that want heartbeats, the reaper and stats every
# second, and the log at debug.
QUICK_WORKER: Dict[str, Any] = {"concurrency": 1, "heartbeat_interval": 1, "heartbeat_ttl": 3,
                                "reaper_interval": 1, "stats_interval": 1, "drain_timeout": 30,
                                "log_level": "debug"}
# [sandbox] for jobs that need no container: each build runs /bin/true.
EXEC_SANDBOX: Dict[str, Any] = {"runtime": "exec", "command": "/bin/true"}


def merge(base: Mapping[str, Mapping[str, Any]], overrides: Mapping[str, Optional[Mapping[str, Any]]]) -> Sections:
    """A copy of base with each section of overrides laid over its own (keys
    keep their first position; new sections and keys go at the end)."""
    out: Sections = {sec: dict(kv) for sec, kv in base.items()}
    for sec, kv in overrides.items():
        out.setdefault(sec, {}).update(kv or {})
    return out


def ini_sections(redis_url: str, ns: str, builds_root: StrPath, **overrides: Optional[Mapping[str, Any]]) -> Sections:
    """[redis] url, [queue] namespace and [worker] builds_root, with overrides merged in."""
    return merge({"redis": {"url": redis_url}, "queue": {"namespace": ns},
                  "worker": {"builds_root": str(builds_root)}}, overrides)


def write_ini(path: StrPath, sections: Mapping[str, Mapping[str, Any]]) -> str:
    """Write {section: {key: value}} as a worker.ini; lists join with spaces,
    booleans are yes/no.  Returns the path as a str."""
    lines = []
    for sec, kv in sections.items():
        lines.append(f"[{sec}]")
        for k, v in kv.items():
            if isinstance(v, (list, tuple)):
                v = " ".join(str(x) for x in v)
            elif isinstance(v, bool):
                v = "yes" if v else "no"
            lines.append(f"{k} = {v}")
        lines.append("")
    Path(path).write_text("\n".join(lines))
    return str(path)


class IniPath(str):
    """The path of a worker.ini, with the namespace it names and its sections."""

    ns: Optional[str] = None
    sections: Optional[Sections] = None
