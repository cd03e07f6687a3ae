"""Fixtures for the tests of the Python client (and of the dashboard).

They are the integration tests' own (tests/integration/conftest.py and
workers.py), imported here, so these tests get the same real
redis-server, workers and cleanup.  This directory is a package
(__init__.py), so this conftest is not the module named `conftest`
that workers.py imports; that one stays tests/integration/conftest.py.
debate_queue is imported from the source tree (shared/python).
"""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
for p in (REPO / "shared" / "python", REPO / "tests" / "integration"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from conftest import (ENQUEUE_BIN, SANITIZED, SLOW, WORKER_BIN, builds_root, enqueue,  # noqa: E402
                      enqueue_bg, free_port, ini, make_ini, redis_factory, redis_server, write_ini)
from workers import (CONTAINERS_CONF, TEST_IMAGE, Fleet, RedisServer, Worker, broot, fleet,  # noqa: E402
                     make_profile, ns, podman, r, redis_srv)

SHARED_PYTHON = REPO / "shared" / "python"

__all__ = ["ENQUEUE_BIN", "SANITIZED", "SLOW", "WORKER_BIN", "builds_root", "enqueue", "enqueue_bg",
           "free_port", "write_ini", "ini", "make_ini", "redis_factory", "redis_server", "CONTAINERS_CONF",
           "TEST_IMAGE", "Fleet", "RedisServer", "Worker", "broot", "fleet", "make_profile", "ns",
           "podman", "r", "redis_srv", "REPO", "SHARED_PYTHON"]
