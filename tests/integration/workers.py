"""Helpers for tests that run the real worker: processes, jobs, runtimes.

Everything here starts real things (the worker binary, podman containers,
a private dockerd) and registers their cleanup, so a failing test leaves
nothing running behind it.
"""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import pytest

from conftest import ENQUEUE_BIN, REPO, SANITIZED, SLOW, WORKER_BIN, free_port, write_ini  # noqa: F401

TEST_IMAGE = "localhost/debate-test:latest"
CONTAINERS_CONF = str(REPO / "tests" / "containers.conf")


class Worker:
    """One worker process, its stderr kept in a file."""

    def __init__(self, ini, args=(), env=None, logdir=None):
        self.ini = ini
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.logpath = Path(logdir or tempfile.mkdtemp()) / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.proc = None

    def start(self):
        self._log = open(self.logpath, "wb")
        # Run from the test's own directory: what the runtime drops in its
        # working directory (conmon writes a file named "oom" there when a
        # container is OOM-killed) stays out of the repository.
        self.proc = subprocess.Popen([WORKER_BIN, "-c", os.path.abspath(self.ini), *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True, cwd=self.logpath.parent)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.logpath.read_text(errors="replace")

    def wait_log(self, pattern, timeout=20):
        """Wait until the log matches pattern (a regex); return the match."""
        deadline = time.time() + timeout * SLOW
        rx = re.compile(pattern)
        while time.time() < deadline:
            m = rx.search(self.log())
            if m:
                return m
            if self.proc.poll() is not None:
                m = rx.search(self.log())
                if m:
                    return m
                raise AssertionError(f"worker exited {self.proc.returncode} before /{pattern}/:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"no /{pattern}/ in the worker log after {timeout}s:\n{self.log()}")

    def signal(self, sig):
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait(self, timeout=30):
        return self.proc.wait(timeout=timeout * SLOW)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


SUBMIT_LUA = (REPO / "shared" / "lua" / "submit.lua").read_text()


def submit(r, ns, **job):
    """Enqueue a job the way the FastAPI backend does (redis-py + msgpack,
    through shared/lua/submit.lua as PROTOCOL.md says)."""
    job.setdefault("id", "t" + uuid.uuid4().hex[:12])
    job.setdefault("source_date_epoch", 1700000000)
    jid = job["id"]
    got = r.eval(SUBMIT_LUA, 4, f"{{{ns}}}:job:{jid}", f"{{{ns}}}:queue", f"{{{ns}}}:result:{jid}",
                 f"{{{ns}}}:log:{jid}", msgpack.packb(job), f"{time.time():.6f}", "new")
    assert got[0] == b"ok", got
    return jid


def poll(cond, timeout, what):
    """Call cond() until it returns something true; return that, or fail naming what."""
    deadline = time.time() + timeout * SLOW
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOW:.0f}s waiting for {what}")
        time.sleep(0.05)


def wid(w):
    """The worker's id, from its start-up line."""
    return w.wait_log(r"notice: worker (\S+) ").group(1)


def push_raw(r, ns, payload):
    """LPUSH raw bytes (for hostile payloads)."""
    r.lpush(f"{{{ns}}}:queue", payload)


def wait_result(r, ns, job_id, timeout=60):
    """BLPOP the job's own result list; returns the decoded result."""
    got = r.blpop(f"{{{ns}}}:result:{job_id}", timeout=int(timeout * SLOW))
    assert got is not None, f"no result for {job_id} within {timeout * SLOW}s"
    return msgpack.unpackb(got[1])


def results(r, ns):
    return [msgpack.unpackb(x) for x in r.lrange(f"{{{ns}}}:results", 0, -1)]


def dead(r, ns):
    return [msgpack.unpackb(x) for x in r.lrange(f"{{{ns}}}:dead", 0, -1)]


def stream_events(r, ns, job_id):
    return [msgpack.unpackb(f[b"event"]) for _, f in r.xrange(f"{{{ns}}}:log:{job_id}")]


def make_profile(root, name, iso_name="debatetest", **conf):
    """An archiso-like profile dir; conf becomes test.conf for the stand-in mkarchiso."""
    d = Path(root) / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "profiledef.sh").write_text(f'iso_name="{iso_name}"\niso_label="TEST"\n')
    (d / "packages.x86_64").write_text("base\nlinux\n")
    if conf:
        (d / "test.conf").write_text("".join(f"{k}={v}\n" for k, v in conf.items()))
    return name


def runtime_containers(runtime_cmd, label, env=None):
    """Names of containers (running or not) carrying label, via the runtime itself."""
    out = subprocess.run([*runtime_cmd, "ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}"],
                         capture_output=True, text=True, env=env, timeout=60)
    return [x for x in out.stdout.split() if x]


def remove_containers(runtime_cmd, label, env=None):
    for name in runtime_containers(runtime_cmd, label, env):
        subprocess.run([*runtime_cmd, "rm", "--force", name], capture_output=True, env=env, timeout=120)


class RedisServer:
    """A real redis-server we own: TCP on a free port and a unix socket.

    persist=True turns on AOF (appendfsync always) the way a production
    Redis keeps its data, so stop()/start() keeps the queue across a restart.
    """

    def __init__(self, dirpath, persist=False, port=None, extra=()):
        import redis
        self.dir = Path(dirpath)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.sock = str(self.dir / "redis.sock")
        self.persist = persist
        self.extra = list(extra)
        self.proc = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._redis = redis

    def start(self):
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--unixsocket", self.sock,
                "--dir", str(self.dir), "--save", "", "--daemonize", "no", "--logfile",
                str(self.dir / "redis.log")]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args + self.extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if self.client().ping():
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start: " + (self.dir / "redis.log").read_text()[-2000:])

    def client(self):
        return self._redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=120)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()   # SIGTERM: redis writes its AOF and exits
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Runtime:
    """A container runtime the worker can drive: its worker.ini lines and env."""

    def __init__(self, name, cmd, env, ini):
        self.name = name
        self.cmd = cmd          # argv prefix to run the runtime by hand
        self.env = env          # environment for the worker and for cmd
        self.ini = ini          # [sandbox] keys

    def containers(self, label):
        return runtime_containers(self.cmd, label, self.env)

    def cleanup(self, ns):
        remove_containers(self.cmd, f"debate.ns={ns}", self.env)


def podman_runtime():
    env = dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)
    if shutil.which("podman") is None:
        pytest.fail("podman is not installed (scripts/install-deps installs it)")
    subprocess.run([str(REPO / "scripts" / "make-test-image"), "podman"], check=True, env=env,
                   capture_output=True, timeout=300)
    return Runtime("podman", ["podman"], env,
                   {"runtime": "podman", "image": TEST_IMAGE, "sudo": "no"})


class Dockerd:
    """A private dockerd under a temp dir (scripts/start-dockerd)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="debate-dockerd-")
        self.reason = None
        self.env = None

    def start(self):
        if shutil.which("dockerd") is None:
            self.reason = "dockerd is not installed"
            return False
        p = subprocess.run([str(REPO / "scripts" / "start-dockerd"), self.dir], capture_output=True,
                           text=True, timeout=120)
        if p.returncode != 0:
            self.reason = f"dockerd could not start here: {p.stderr.strip()[-500:]}"
            return False
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.dir}/docker.sock")
        subprocess.run([str(REPO / "scripts" / "make-test-image"), "docker"], check=True, env=self.env,
                       capture_output=True, timeout=300)
        return True

    def stop(self):
        subprocess.run([str(REPO / "scripts" / "start-dockerd"), "--stop", self.dir], capture_output=True,
                       timeout=180)
        shutil.rmtree(self.dir, ignore_errors=True)

    def runtime(self):
        return Runtime("docker", ["docker"], self.env,
                       {"runtime": "docker", "image": TEST_IMAGE, "sudo": "no"})


# ---------------------------------------------------------------- fixtures
# Test modules do `from workers import *` to get these.

@pytest.fixture(scope="session")
def podman():
    return podman_runtime()


@pytest.fixture(scope="session")
def dockerd_rt():
    d = Dockerd()
    if not d.start():
        d.stop()
        pytest.skip(d.reason)
    yield d.runtime()
    d.stop()


@pytest.fixture(params=["podman", "docker"])
def runtime(request):
    """Each test using it runs once with podman and once with a private dockerd."""
    return request.getfixturevalue("podman" if request.param == "podman" else "dockerd_rt")


@pytest.fixture
def ns():
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def broot(tmp_path):
    d = tmp_path / "builds"
    d.mkdir()
    return d


class Fleet:
    """Starts workers against one Redis and namespace; stops them all at teardown."""

    def __init__(self, tmp_path, redis_url, ns, broot):
        self.tmp = tmp_path
        self.redis_url = redis_url
        self.ns = ns
        self.broot = broot
        self.workers = []
        self.runtimes = []

    def ini(self, runtime=None, **sections):
        base = {
            "redis": {"url": self.redis_url},
            "queue": {"namespace": self.ns},
            "worker": {"builds_root": str(self.broot), "concurrency": 1, "heartbeat_interval": 1,
                       "heartbeat_ttl": 3, "reaper_interval": 1, "stats_interval": 1,
                       "drain_timeout": 30, "log_level": "debug"},
            "sandbox": {"runtime": "exec", "command": "/bin/true"},
        }
        if runtime is not None:
            base["sandbox"] = dict(runtime.ini, stop_grace=2)
            if runtime not in self.runtimes:
                self.runtimes.append(runtime)
        for sec, kv in sections.items():
            base.setdefault(sec, {}).update(kv)
        return write_ini(self.tmp / f"worker-{uuid.uuid4().hex[:6]}.ini", base)

    def start(self, runtime=None, args=(), ini=None, **sections):
        ini = ini or self.ini(runtime, **sections)
        env = runtime.env if runtime is not None else None
        w = Worker(ini, args, env=env, logdir=self.tmp).start()
        self.workers.append(w)
        return w

    def close(self):
        for w in self.workers:
            try:
                w.stop(timeout=20)
            except Exception:
                pass
        for rt in self.runtimes:
            rt.cleanup(self.ns)
        # Under ASan/UBSan a report in any worker's log fails the test.
        reports = [w.logpath for w in self.workers
                   if re.search(r"Sanitizer|runtime error:", w.log())]
        assert not reports, "sanitizer reports in " + ", ".join(map(str, reports))


@pytest.fixture
def redis_srv(tmp_path):
    """A fresh redis-server per test, always stopped afterwards."""
    srv = RedisServer(tmp_path / "redis").start()
    yield srv
    srv.stop()


@pytest.fixture
def r(redis_srv):
    return redis_srv.client()


@pytest.fixture
def fleet(tmp_path, redis_srv, ns, broot):
    f = Fleet(tmp_path, redis_srv.url, ns, broot)
    yield f
    f.close()
