"""The fixtures of every pytest test here (tests/integration and tests/python).

Everything is real: private redis-servers on free 127.0.0.1 ports and unix
sockets, the enqueue and worker binaries, podman and a private dockerd.
Every process a fixture starts is stopped by pid when the fixture is torn
down, even when a test fails.  The classes behind them are tests/harness.

Fixtures
  redis_server      session: one redis-server (.url, .unix_url, .sock, .port,
                    .client()); tests keep apart by namespace
  redis_factory     function: start extra servers, e.g. with a password:
                    redis_factory("--requirepass", "s3cret")
  redis_srv, r      function: a fresh redis-server of the test's own, and a
                    client of it
  ns                function: a fresh namespace
  builds_root       function: an empty builds_root directory (a Path);
  broot             the same for fleet
  make_ini          function: make_ini(**sections) writes a worker.ini with
                    [redis] url, [queue] namespace (unique), [worker]
                    builds_root, plus the given overrides; returns its path
                    (a str with .ns, the namespace)
  ini               function: make_ini() with no overrides
  enqueue           function: enqueue(*args, check=..., input=..., ini=...)
                    runs the binary with -c ini; returns CompletedProcess
  enqueue_bg        function: the same as a Popen, killed at teardown
  procs             function: Popen objects appended are stopped at teardown
  fleet             function: a Fleet on redis_srv, ns and broot
  podman, dockerd_rt, runtime
                    the container runtimes (runtime: once with each)

Binaries: ENQUEUE_BIN and WORKER_BIN from the environment (relative paths
are taken from the repository root), else enqueue/enqueue and worker/worker.
"""
from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, List, Mapping, Optional

import pytest
import redis

from tests.harness import (ENQUEUE_BIN, SLOW, Dockerd, Fleet, IniPath, RedisServer, Runtime, ini_sections, merge,
                           podman_runtime, sanitizer_report, tool_env, write_ini)


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> RedisServer:
    server = RedisServer(socket_timeout=None)
    request.addfinalizer(server.cleanup)
    return server.start()


@pytest.fixture
def redis_factory(request: pytest.FixtureRequest) -> Callable[..., RedisServer]:
    """Start more servers: redis_factory(*args, password=None)."""
    def start(*extra: str, password: Optional[str] = None) -> RedisServer:
        server = RedisServer(extra=extra, password=password, socket_timeout=None)
        request.addfinalizer(server.cleanup)
        return server.start()
    return start


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server per test, always stopped afterwards."""
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture
def r(redis_srv: RedisServer) -> "redis.Redis[bytes]":
    return redis_srv.client()


@pytest.fixture
def ns() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def builds_root(tmp_path: Path) -> Path:
    root = tmp_path / "builds"
    root.mkdir()
    return root


@pytest.fixture
def broot(tmp_path: Path) -> Path:
    d = tmp_path / "builds"
    d.mkdir()
    return d


@pytest.fixture
def make_ini(tmp_path: Path, redis_server: RedisServer, builds_root: Path) -> Callable[..., IniPath]:
    def make(**sections: Mapping[str, Any]) -> IniPath:
        ns = "t" + uuid.uuid4().hex[:10]
        merged = merge(ini_sections(redis_server.url, ns, builds_root), sections)
        path = IniPath(write_ini(tmp_path / f"worker-{ns}.ini", merged))
        path.ns = merged["queue"]["namespace"]
        path.sections = merged
        return path
    return make


@pytest.fixture
def ini(make_ini: Callable[..., IniPath]) -> IniPath:
    return make_ini()


@pytest.fixture
def enqueue(ini: IniPath) -> Callable[..., "subprocess.CompletedProcess[str]"]:
    """Run enqueue with -c ini; check=True or an int asserts the exit code."""
    def run(*args: Any, check: Any = None, input: Optional[str] = None, ini: Optional[str] = ini,
            env: Optional[Mapping[str, str]] = None, timeout: float = 60 * SLOW) -> "subprocess.CompletedProcess[str]":
        argv = [ENQUEUE_BIN] + (["-c", str(ini)] if ini else []) + [str(a) for a in args]
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, env=tool_env(env),
                            timeout=timeout)
        assert sanitizer_report(cp.stderr) is None, cp.stderr
        want = 0 if check is True else check
        if want is not None and want is not False:
            assert cp.returncode == want, (
                f"{argv} exited {cp.returncode}, wanted {want}\n"
                f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
        return cp
    return run


@pytest.fixture
def enqueue_bg(ini: IniPath) -> Iterator[Callable[..., "subprocess.Popen[str]"]]:
    """Start enqueue in the background; killed (by pid) at teardown."""
    procs: List["subprocess.Popen[str]"] = []

    def start(*args: Any, ini: Optional[str] = ini, env: Optional[Mapping[str, str]] = None,
              **kw: Any) -> "subprocess.Popen[str]":
        argv = [ENQUEUE_BIN] + (["-c", str(ini)] if ini else []) + [str(a) for a in args]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=tool_env(env), start_new_session=True, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        for f in (p.stdout, p.stderr, p.stdin):
            if f is not None:
                f.close()


@pytest.fixture
def procs() -> Iterator[List["subprocess.Popen[Any]"]]:
    """Popen objects registered here are stopped (by pid) at teardown."""
    started: List["subprocess.Popen[Any]"] = []
    yield started
    for p in reversed(started):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(tmp_path: Path, redis_srv: RedisServer, ns: str, broot: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path, redis_srv.url, ns, broot)
    yield f
    f.close()


@pytest.fixture(scope="session")
def podman() -> Runtime:
    return podman_runtime()


@pytest.fixture(scope="session")
def dockerd_rt() -> Iterator[Runtime]:
    d = Dockerd()
    if not d.start():
        d.stop()
        pytest.skip(d.reason)
    yield d.runtime()
    d.stop()


@pytest.fixture(params=["podman", "docker"])
def runtime(request: pytest.FixtureRequest) -> Runtime:
    """Each test using it runs once with podman and once with a private dockerd."""
    return request.getfixturevalue("podman" if request.param == "podman" else "dockerd_rt")
