"""Fleet: the workers of one test, against one Redis and namespace."""
from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

from .ini import EXEC_SANDBOX, QUICK_WORKER, ini_sections, merge, write_ini
from .process import Worker
from .runtime import Runtime


class Fleet:
    """Starts workers against one Redis and namespace; stops them all at teardown."""

    def __init__(self, tmp_path: Path, redis_url: str, ns: str, broot: Path) -> None:
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.ns = ns
        self.broot = broot
        self.workers: List[Worker] = []
        self.runtimes: List[Runtime] = []

    def ini(self, runtime: Optional[Runtime] = None, **sections: Mapping[str, Any]) -> str:
        """A worker.ini: QUICK_WORKER timings, exec /bin/true builds (or
        runtime's [sandbox] with stop_grace 2), then sections merged in."""
        base = ini_sections(self.redis_url, self.ns, self.broot, worker=QUICK_WORKER, sandbox=EXEC_SANDBOX)
        if runtime is not None:
            base["sandbox"] = dict(runtime.ini, stop_grace=2)
            if runtime not in self.runtimes:
                self.runtimes.append(runtime)
        return write_ini(self.tmp / f"worker-{uuid.uuid4().hex[:6]}.ini", merge(base, sections))

    def start(self, runtime: Optional[Runtime] = None, args: Sequence[str] = (), ini: Optional[str] = None,
              **sections: Mapping[str, Any]) -> Worker:
        """Start a worker on ini (or on self.ini(runtime, **sections))."""
        ini = ini or self.ini(runtime, **sections)
        env = runtime.env if runtime is not None else None
        w = Worker(ini, args, env=env, logdir=self.tmp).start()
        self.workers.append(w)
        return w

    def close(self) -> None:
        """Stop every worker, remove the runtimes' containers of the namespace;
        a sanitizer report in any worker's log fails the test."""
        for w in self.workers:
            try:
                w.stop(timeout=20)
            except Exception:
                pass
        for rt in self.runtimes:
            rt.cleanup(self.ns)
        reports = [w.logpath for w in self.workers
                   if re.search(r"Sanitizer|runtime error:", w.log())]
        assert not reports, "sanitizer reports in " + ", ".join(map(str, reports))
