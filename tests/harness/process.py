"""Processes we start: output to a log file, a session of their own,
stopped by pid.  Worker is the worker binary with a worker.ini."""
from __future__ import annotations

import os
import re
from signal import SIGTERM
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Dict, Mapping, Optional, Sequence, Union

from .env import SLOW, WORKER_BIN
from .ini import StrPath

# Worker(cwd=LOGDIR), the default: run in the directory of the log.
LOGDIR = "<logdir>"


class Process:
    """argv with stdout and stderr in logpath; start() starts it."""

    def __init__(self, argv: Sequence[str], logpath: Path, env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[StrPath] = None) -> None:
        self.argv = list(argv)
        self.logpath = logpath
        self.env: Optional[Dict[str, str]] = None if env is None else dict(env)
        self.cwd = cwd
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self._log: Optional[IO[bytes]] = None

    def start(self) -> "Process":
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=self.cwd)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.logpath.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout * SLOW)

    def stop(self, timeout: float = 30, sig: int = SIGTERM) -> Optional[int]:
        """sig (SIGTERM), then SIGKILL if it does not exit within timeout
        (times SLOW) seconds; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(sig)
            try:
                self.proc.wait(timeout=timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


class Worker(Process):
    """One worker process (`WORKER_BIN -c INI ARGS`), its stderr kept in a
    file in logdir (a new temporary directory unless told).  wrap: an argv
    prefix (setpriv, ip netns exec, valgrind); env: the whole environment
    (this one's unless told); cwd: where it runs (the log's directory unless
    told; None: here)."""

    def __init__(self, ini: StrPath, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
                 logdir: Optional[StrPath] = None, wrap: Sequence[str] = (),
                 cwd: Union[StrPath, None] = LOGDIR) -> None:
        logpath = Path(logdir or tempfile.mkdtemp()) / f"worker-{uuid.uuid4().hex[:8]}.log"
        # Run from the test's own directory by default: what the runtime
        # drops in its working directory (conmon writes a file named "oom"
        # there when a container is OOM-killed) stays out of the repository.
        super().__init__((), logpath, dict(os.environ if env is None else env),
                         logpath.parent if cwd == LOGDIR else cwd)
        self.ini = ini
        self.args = list(args)
        self.wrap = list(wrap)

    def start(self) -> "Worker":
        self.argv = [*self.wrap, WORKER_BIN, "-c", os.path.abspath(self.ini), *self.args]
        super().start()
        return self

    def wait_log(self, pattern: str, timeout: float = 20) -> "re.Match[str]":
        """Wait until the log matches pattern (a regex); return the match."""
        deadline = time.time() + timeout * SLOW
        rx = re.compile(pattern)
        while time.time() < deadline:
            m = rx.search(self.log())
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                m = rx.search(self.log())
                if m:
                    return m
                raise AssertionError(f"worker exited {self.proc.returncode} before /{pattern}/:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no /{pattern}/ in the worker log after {timeout}s:\n{self.log()}")


def wid(w: Worker) -> str:
    """The worker's id, from its start-up line."""
    return w.wait_log(r"notice: worker (\S+) ").group(1)


def sanitizer_report(text: Optional[str]) -> Optional[str]:
    """text if it holds an AddressSanitizer/UBSan report, else None."""
    for mark in ("Sanitizer", "runtime error:"):
        if mark in (text or ""):
            return text
    return None


def tool_env(extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment for a binary under test: no REDIS_URL or password from
    outside, and a sanitizer report exits 86 (never passing for an expected
    exit code of 1); then extra."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBATE_REDIS_PASSWORD")}
    asan = env.get("ASAN_OPTIONS", "detect_leaks=1")
    if "exitcode=" not in asan:
        env["ASAN_OPTIONS"] = asan + ":exitcode=86"
    env.update(extra or {})
    return env
