"""Secrets stay out of sight: the Redis password in URLs (worker and
enqueue errors and logs), sentinels that need a password or never answer,
and env_allow values that must not show on the runtime's command line.

Real redis-server, redis-sentinel and podman; every process is stopped by
pid at teardown (the `procs` list, the Fleet), also when a test fails.
"""
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.harness import (ENQUEUE_BIN, SLOW, WORKER_BIN, RedisServer, free_port, make_profile,
                           stream_events, submit, wait_result, write_ini)


PASSWORD = "hun@ter2/x"     # '@' and '/' in it, as the URL carries it unescaped
PARTS = ("hun", "ter2")     # no part of it may show either


def assert_hidden(text, what):
    for part in PARTS:
        assert part not in text, f"{what} shows the password ({part!r}):\n{text}"


def run_worker(ini, *args, timeout=30):
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBATE_REDIS_PASSWORD")}
    return subprocess.run([WORKER_BIN, "-c", str(ini), *args], capture_output=True, text=True,
                          env=env, timeout=timeout * SLOW)


def run_enqueue(ini, *args, env=None, timeout=60):
    e = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBATE_REDIS_PASSWORD")}
    e.update(env or {})
    return subprocess.run([ENQUEUE_BIN, "-c", str(ini), *args], capture_output=True, text=True,
                          env=e, timeout=timeout * SLOW)


# URLs that fail to parse; each holds PASSWORD in its userinfo.
BAD_URLS = [
    f"rediss://:{PASSWORD}@127.0.0.1:6379/0",           # unsupported scheme: echoed, masked
    f"redis://:{PASSWORD}@127.0.0.1/abc",               # split at the first '@' put "x/..." in the db
    f"redis://u:{PASSWORD}@127.0.0.1:notaport/0",
    f"sentinel://:{PASSWORD}@127.0.0.1:26379",          # no master name
    f"unix://:{PASSWORD}@/tmp/none.sock?database=1",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_url_errors_hide_the_password(tmp_path, url):
    ini = write_ini(tmp_path / "worker.ini", {"queue": {"namespace": "tsecret"},
                                              "worker": {"builds_root": str(tmp_path)},
                                              "sandbox": {"runtime": "exec", "command": "/bin/true"}})
    # The worker: --redis, REDIS_URL and [redis] url.
    w = run_worker(ini, "--redis", url)
    assert w.returncode != 0, w
    assert "url" in (w.stdout + w.stderr).lower(), w.stderr
    assert_hidden(w.stdout + w.stderr, "worker --redis")
    ini2 = write_ini(tmp_path / "worker2.ini", {"redis": {"url": url}, "queue": {"namespace": "tsecret"},
                                                "worker": {"builds_root": str(tmp_path)},
                                                "sandbox": {"runtime": "exec", "command": "/bin/true"}})
    w = run_worker(ini2)
    assert w.returncode != 0
    assert_hidden(w.stdout + w.stderr, "worker [redis] url")
    # enqueue: --redis, REDIS_URL, worker.ini.
    for args, env, what in ((["--redis", url, "queue"], None, "enqueue --redis"),
                            (["queue"], {"REDIS_URL": url}, "enqueue REDIS_URL")):
        e = run_enqueue(ini, *args, env=env)
        assert e.returncode == 2, e
        assert_hidden(e.stdout + e.stderr, what)
    e = run_enqueue(ini2, "queue")
    assert e.returncode == 2, e
    assert_hidden(e.stdout + e.stderr, "enqueue [redis] url")


def test_password_with_at_sign_connects_and_never_shows(fleet, tmp_path, ns, broot):
    """A password holding '@' and '/' unescaped: parsed at the last '@', used, never printed."""
    srv = RedisServer(tmp_path / "redis-auth")
    srv.start()
    try:
        srv.client().config_set("requirepass", PASSWORD)
        url = f"redis://:{PASSWORD}@127.0.0.1:{srv.port}/0"
        w = fleet.start(args=["--redis", url])
        w.wait_log(r"redis cmd: connected")
        c = redis.Redis(host="127.0.0.1", port=srv.port, password=PASSWORD, socket_timeout=60)
        make_profile(broot, "p")
        assert wait_result(c, ns, submit(c, ns, profile="p", output="o"), 20)["status"] == "succeeded"
        assert w.stop() == 0
        assert_hidden(w.log(), "the worker's log")
        ini = write_ini(tmp_path / "enq.ini", {"queue": {"namespace": ns}})
        e = run_enqueue(ini, "--redis", url, "queue")
        assert e.returncode == 0, e
        # A wrong password: the error names the server, not the password.
        e = run_enqueue(ini, "--redis", f"redis://:{PASSWORD}y@127.0.0.1:{srv.port}/0", "queue")
        assert e.returncode == 8 and "authentication failed" in e.stderr, e
        assert "redis://***@127.0.0.1" in e.stderr
        assert_hidden(e.stdout + e.stderr, "enqueue with a wrong password")
    finally:
        srv.stop()


# ---------------------------------------------------------------- sentinels

def start_sentinel(d, master_port, procs, password=None):
    """One redis-sentinel watching 127.0.0.1:master_port; requirepass when password is set."""
    port = free_port()
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "sentinel.conf"
    text = (f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
            f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds mymaster 5000\n")
    if password:
        text += f"requirepass {password}\nsentinel auth-pass mymaster {password}\n"
    conf.write_text(text)
    p = subprocess.Popen(["redis-sentinel", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(p)
    deadline = time.time() + 20 * SLOW
    while time.time() < deadline:
        try:
            c = redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=5)
            if c.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"):
                return port
        except redis.RedisError:
            pass
        time.sleep(0.1)
    raise RuntimeError("redis-sentinel did not start: " + (d / "sentinel.log").read_text()[-2000:])


def test_sentinel_with_requirepass_gets_auth(fleet, tmp_path, ns, broot, procs):
    """The URL's password opens the sentinel as well as the master (worker and enqueue)."""
    pw = "s3nt-pw"
    mport = free_port()
    mdir = tmp_path / "master"
    mdir.mkdir()
    master = subprocess.Popen(["redis-server", "--port", str(mport), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(mdir), "--requirepass", pw],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs.append(master)
    c = redis.Redis(host="127.0.0.1", port=mport, password=pw, socket_timeout=30)
    deadline = time.time() + 20
    while True:
        try:
            c.ping()
            break
        except redis.RedisError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    sport = start_sentinel(tmp_path / "sentinel", mport, procs, password=pw)
    url = f"sentinel://:{pw}@127.0.0.1:{sport}/mymaster"
    w = fleet.start(args=["--redis", url])
    w.wait_log(r"sentinels say the master is 127\.0\.0\.1:%d" % mport)
    w.wait_log(r"redis cmd: connected")
    make_profile(broot, "p")
    assert wait_result(c, ns, submit(c, ns, profile="p", output="o"), 20)["status"] == "succeeded"
    assert "NOAUTH" not in w.log()
    assert pw not in w.log()
    assert w.stop() == 0
    ini = write_ini(tmp_path / "enq.ini", {"queue": {"namespace": ns}})
    e = run_enqueue(ini, "--redis", url, "queue")
    assert e.returncode == 0, e
    assert pw not in e.stdout + e.stderr


def blackhole():
    """A listening socket that answers nothing: backlog 0, filled by two
    connections nobody accepts, so a further connect is never completed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(0)
    fillers = []
    for _ in range(2):
        f = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        f.setblocking(False)
        try:
            f.connect(s.getsockname())
        except BlockingIOError:
            pass
        fillers.append(f)
    return s, fillers


def test_silent_sentinel_times_out_and_the_next_is_asked(fleet, tmp_path, ns, broot, procs, redis_srv, r):
    hole, fillers = blackhole()
    try:
        sport = start_sentinel(tmp_path / "sentinel", redis_srv.port, procs)
        url = f"sentinel://127.0.0.1:{hole.getsockname()[1]},127.0.0.1:{sport}/mymaster"
        t0 = time.time()
        w = fleet.start(args=["--redis", url], redis={"connect_timeout": 1})
        w.wait_log(r"sentinel 127\.0\.0\.1:%d did not answer within 1 s" % hole.getsockname()[1], 15)
        w.wait_log(r"sentinels say the master is 127\.0\.0\.1:%d" % redis_srv.port, 15)
        w.wait_log(r"redis cmd: connected", 15)
        assert time.time() - t0 < 15 * SLOW
        make_profile(broot, "p")
        assert wait_result(r, ns, submit(r, ns, profile="p", output="o"), 20)["status"] == "succeeded"
        assert w.stop() == 0
        ini = write_ini(tmp_path / "enq.ini", {"queue": {"namespace": ns}, "redis": {"connect_timeout": 1}})
        t0 = time.time()
        e = run_enqueue(ini, "--redis", url, "queue", timeout=30)
        assert e.returncode == 0, e
        assert time.time() - t0 < 15 * SLOW
    finally:
        for f in fillers:
            f.close()
        hole.close()


# ---------------------------------------------------------------- env_allow

def proc_cmdlines():
    """{pid: argv bytes} of every process we may read."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                out[int(d)] = Path(f"/proc/{d}/cmdline").read_bytes()
            except OSError:
                pass
    return out


def children(pid):
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_env_allow_value_not_on_any_cmdline(fleet, r, ns, broot, podman):
    token = "tok-" + os.urandom(8).hex()
    prof = Path(broot) / make_profile(broot, "envp")
    script = prof / "airootfs" / "root" / "customize_airootfs.sh"
    script.parent.mkdir(parents=True)
    # The build shows a digest of what it got (and is alive for a while).
    script.write_text('echo "seen:$(printf %s "$DEBATE_T_TOKEN" | sha256sum | cut -c1-16)"\n'
                      'echo "running"\nsleep 6\n')
    rt = podman.with_env(DEBATE_T_TOKEN=token)
    w = fleet.start(rt, sandbox={"env_allow": "DEBATE_T_TOKEN"})
    w.wait_log(r"redis cmd: connected")
    jid = submit(r, ns, profile="envp", output="o")
    w.wait_log(r"job %s: started" % jid, 60)
    client = None
    deadline = time.time() + 60 * SLOW
    while time.time() < deadline and client is None:
        for pid in children(w.pid):
            if b"--env=DEBATE_T_TOKEN" in proc_cmdlines().get(pid, b""):
                client = pid
        time.sleep(0.1)
    assert client is not None, "no runtime client with --env=DEBATE_T_TOKEN among the worker's children"
    # While the build runs: no command line on the host holds the value.
    seen_running = False
    while time.time() < deadline and not seen_running:
        for pid, argv in proc_cmdlines().items():
            assert token.encode() not in argv, f"pid {pid} shows the value: {argv!r}"
        seen_running = any("running" in line for ev in stream_events(r, ns, jid) if ev.get("type") == "log"
                           for line in ev.get("lines", []))
        time.sleep(0.2)
    for pid, argv in proc_cmdlines().items():
        assert token.encode() not in argv, f"pid {pid} shows the value: {argv!r}"
    res = wait_result(r, ns, jid, 90)
    assert res["status"] == "succeeded", res
    want = "seen:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    lines = [line.decode() if isinstance(line, bytes) else line
             for ev in stream_events(r, ns, jid) if ev.get("type") == "log" for line in ev.get("lines", [])]
    assert want in lines, lines
