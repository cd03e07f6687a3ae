"""The one test harness: what the integration tests (tests/integration),
the Python client's tests (tests/python) and the benchmark (scripts/bench)
start and read.  Everything here starts real things (redis-server, the
worker binary, podman containers, a private dockerd) and can stop them by
pid; tests/conftest.py wraps them in fixtures that always clean up.

  env           REPO, the binaries, TEST_IMAGE, SLOW (the sanitizer factor),
                free_port, poll
  keys          nskey(ns, ...): the `{ns}:` key names
  ini           write_ini and the layered sections of a worker.ini
  redis_server  RedisServer (persist=, password=, extra=, wrap=)
  process       Process, Worker (the worker binary), wid, tool_env
  jobs          submit, wait_result, results, dead, stream_events, make_profile,
                write_script
  runtime       Runtime, podman_runtime, Dockerd
  fleet         Fleet: a test's workers on one Redis and namespace

Import it as `tests.harness` with the repository root on sys.path (pytest.ini
`pythonpath`, or PYTHONPATH for the benchmark).
"""
from .env import (CONTAINERS_CONF, ENQUEUE_BIN, REPO, SANITIZED, SHARED_PYTHON, SLOW, TEST_IMAGE, WORKER_BIN,
                  free_port, poll)
from .fleet import Fleet
from .ini import EXEC_SANDBOX, QUICK_WORKER, IniPath, Sections, ini_sections, merge, write_ini
from .jobs import dead, make_profile, push_raw, results, stream_events, submit, wait_result, write_script
from .keys import nskey
from .process import Process, Worker, sanitizer_report, tool_env, wid
from .redis_server import RedisServer
from .runtime import Dockerd, Runtime, podman_env, podman_runtime, remove_containers, runtime_containers

__all__ = ["CONTAINERS_CONF", "ENQUEUE_BIN", "REPO", "SANITIZED", "SHARED_PYTHON", "SLOW", "TEST_IMAGE",
           "WORKER_BIN", "free_port", "poll", "Fleet", "EXEC_SANDBOX", "QUICK_WORKER", "IniPath", "Sections",
           "ini_sections", "merge", "write_ini", "dead", "make_profile", "push_raw", "results", "stream_events",
           "submit", "wait_result", "write_script", "nskey", "Process", "Worker", "sanitizer_report", "tool_env", "wid",
           "RedisServer", "Dockerd", "Runtime", "podman_env", "podman_runtime", "remove_containers",
           "runtime_containers"]
