"""Where things are and how slow this run is: the repository, the binaries
under test, the test image, the sanitizer factor, and a polling helper."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
SHARED_PYTHON = REPO / "shared" / "python"


def _bin(var: str, default: str) -> str:
    """$var (relative paths are taken from the repository root), else default."""
    path = Path(os.environ.get(var, default))
    if not path.is_absolute():
        path = REPO / path
    return str(path)


ENQUEUE_BIN = _bin("ENQUEUE_BIN", "enqueue/enqueue")
WORKER_BIN = _bin("WORKER_BIN", "worker/worker")
SANITIZED = os.environ.get("DEBATE_SANITIZED") == "1"
# Timeouts scale with this under AddressSanitizer.
SLOW = 3.0 if SANITIZED else 1.0

TEST_IMAGE = "localhost/debate-test:latest"
CONTAINERS_CONF = str(REPO / "tests" / "containers.conf")


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(cond: Callable[[], T], timeout: float = 10, what: str = "a condition", interval: float = 0.05) -> T:
    """Call cond() until it returns something true; return that, or fail
    naming what after timeout (times SLOW) seconds."""
    deadline = time.time() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOW:.0f}s waiting for {what}")
        time.sleep(interval)
