"""Shared fixtures for the integration tests (run with /usr/bin/python3 -m pytest).

Everything here is real: a private redis-server on a free 127.0.0.1 port and
a unix socket, the enqueue (and worker) binaries.  Every process a fixture
starts is stopped by pid when the fixture is torn down, even when a test
fails.

Fixtures
  redis_server      session: one redis-server (.url, .unix_url, .sock, .port,
                    .client()); tests keep apart by namespace
  redis_factory     function: start extra servers, e.g. with a password:
                    redis_factory("--requirepass", "s3cret")
  builds_root       function: an empty builds_root directory (a Path)
  make_ini          function: make_ini(**sections) writes a worker.ini with
                    [redis] url, [queue] namespace (unique), [worker]
                    builds_root, plus the given overrides; returns its path
                    (a str with .ns, the namespace)
  ini               function: make_ini() with no overrides
  enqueue           function: enqueue(*args, check=..., input=..., ini=...)
                    runs the binary with -c ini; returns CompletedProcess
  enqueue_bg        function: the same as a Popen, killed at teardown

Binaries: ENQUEUE_BIN and WORKER_BIN from the environment (relative paths
are taken from the repository root), else enqueue/enqueue and worker/worker.
"""
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]


def _bin(var, default):
    path = Path(os.environ.get(var, default))
    if not path.is_absolute():
        path = REPO / path
    return str(path)


ENQUEUE_BIN = _bin("ENQUEUE_BIN", "enqueue/enqueue")
WORKER_BIN = _bin("WORKER_BIN", "worker/worker")
SANITIZED = os.environ.get("DEBATE_SANITIZED") == "1"
# Timeouts scale with this under AddressSanitizer.
SLOW = 3.0 if SANITIZED else 1.0
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port():
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_ini(path, sections):
    """Write {section: {key: value}} as a worker.ini; lists join with spaces."""
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
    """The path of a worker.ini, with the namespace it names."""

    ns = None
    sections = None


class RedisServer:
    """A redis-server of our own on 127.0.0.1:port and a unix socket."""

    def __init__(self, *extra, password=None):
        self.dir = tempfile.mkdtemp(prefix="debate-redis-", dir="/tmp")
        self.sock = os.path.join(self.dir, "redis.sock")
        self.extra = list(extra)
        self.password = password
        self.proc = None
        self.port = None

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def unix_url(self):
        return f"unix://{self.sock}"

    def client(self, **kw):
        kw.setdefault("password", self.password)
        return redis.Redis(host="127.0.0.1", port=self.port, **kw)

    def start(self):
        last = None
        for _ in range(5):
            self.port = free_port()
            args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                    "--unixsocket", self.sock, "--unixsocketperm", "700",
                    "--save", "", "--appendonly", "no", "--dir", self.dir,
                    "--logfile", os.path.join(self.dir, "redis.log"), *self.extra]
            if self.password:
                args += ["--requirepass", self.password]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            deadline = time.time() + 10
            while time.time() < deadline and self.proc.poll() is None:
                try:
                    if self.client(socket_timeout=1).ping():
                        return self
                except redis.exceptions.ConnectionError as e:
                    last = e
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not start: {last}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(request):
    server = RedisServer()
    request.addfinalizer(server.cleanup)
    return server.start()


@pytest.fixture
def redis_factory(request):
    """Start more servers: redis_factory(*args, password=None)."""
    def start(*extra, password=None):
        server = RedisServer(*extra, password=password)
        request.addfinalizer(server.cleanup)
        return server.start()
    return start


@pytest.fixture
def builds_root(tmp_path):
    root = tmp_path / "builds"
    root.mkdir()
    return root


@pytest.fixture
def make_ini(tmp_path, redis_server, builds_root):
    def make(**sections):
        ns = "t" + uuid.uuid4().hex[:10]
        merged = {"redis": {"url": redis_server.url}, "queue": {"namespace": ns},
                  "worker": {"builds_root": str(builds_root)}}
        for sec, kv in sections.items():
            merged.setdefault(sec, {}).update(kv)
        path = IniPath(write_ini(tmp_path / f"worker-{ns}.ini", merged))
        path.ns = merged["queue"]["namespace"]
        path.sections = merged
        return path
    return make


@pytest.fixture
def ini(make_ini):
    return make_ini()


def _env(extra):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBATE_REDIS_PASSWORD")}
    # A sanitizer report must not pass for an expected exit code of 1.
    asan = env.get("ASAN_OPTIONS", "detect_leaks=1")
    if "exitcode=" not in asan:
        env["ASAN_OPTIONS"] = asan + ":exitcode=86"
    env.update(extra or {})
    return env


def sanitizer_report(stderr):
    """The AddressSanitizer/UBSan report in stderr, or None."""
    for mark in ("Sanitizer", "runtime error:"):
        if mark in (stderr or ""):
            return stderr
    return None


@pytest.fixture
def enqueue(ini):
    """Run enqueue with -c ini; check=True or an int asserts the exit code."""
    def run(*args, check=None, input=None, ini=ini, env=None, timeout=60 * SLOW):
        argv = [ENQUEUE_BIN] + (["-c", str(ini)] if ini else []) + [str(a) for a in args]
        cp = subprocess.run(argv, input=input, capture_output=True, text=True, env=_env(env),
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
def enqueue_bg(ini):
    """Start enqueue in the background; killed (by pid) at teardown."""
    procs = []

    def start(*args, ini=ini, env=None, **kw):
        argv = [ENQUEUE_BIN] + (["-c", str(ini)] if ini else []) + [str(a) for a in args]
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=_env(env), start_new_session=True, **kw)
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
def procs():
    """Popen objects registered here are stopped (by pid) at teardown."""
    started = []
    yield started
    for p in reversed(started):
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
