"""The worker as an unprivileged user driving `sudo -n podman`, the way
the seed ran it: OOM kills are still seen (read from the cgroup's oom_kill
counter, which needs no write access), timeout, cancel and drain still
reach the container, and env_allow values get through sudo by name.

The test creates a user (when it is missing) and a sudoers rule letting it
run /usr/bin/podman, and mount/umount (the worker binds each job's held
directories onto its own mount points with them), without a password, keeping CONTAINERS_CONF and the
env_allow variable (sudo resets the environment); both are removed at
teardown whatever happens.  podman runs as root through sudo, so root's
storage and its test image serve.  The worker's files (worker.ini,
builds_root, its cid dir under /tmp) live in a directory the user owns.
"""
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.harness import (CONTAINERS_CONF, QUICK_WORKER, SLOW, TEST_IMAGE, Worker, ini_sections,
                           make_profile, merge, nskey, stream_events, submit, wait_result, write_ini)


USER = "debate-sudo-test"
SUDOERS = Path(f"/etc/sudoers.d/{USER}")
TOKEN_VAR = "DEBATE_T_TOKEN"


@pytest.fixture(scope="module")
def sudo_user(podman):
    """The unprivileged user and its sudoers rule; removed at teardown."""
    if os.geteuid() != 0:
        pytest.fail("test_sudo.py needs root (it adds a user and a sudoers rule)")
    for tool in ("sudo", "useradd", "userdel", "setpriv", "visudo"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing (scripts/install-deps installs sudo)")
    created = False
    try:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER], check=True)
            created = True
        rule = (f'Defaults:{USER} env_keep += "CONTAINERS_CONF {TOKEN_VAR}"\n'
                f"{USER} ALL=(root) NOPASSWD: /usr/bin/podman, /usr/bin/mount, /usr/bin/umount\n")
        tmp = SUDOERS.with_name(f".{USER}.tmp")
        tmp.write_text(rule)
        tmp.chmod(0o440)
        subprocess.run(["visudo", "-cf", str(tmp)], check=True, capture_output=True)
        tmp.rename(SUDOERS)
        yield pwd.getpwnam(USER)
    finally:
        for p in (SUDOERS, SUDOERS.with_name(f".{USER}.tmp")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        if created:
            subprocess.run(["userdel", USER], capture_output=True)


@pytest.fixture
def home(sudo_user):
    """A directory the user owns, for worker.ini, builds_root and the log."""
    d = Path(tempfile.mkdtemp(prefix="debate-sudo-", dir="/tmp"))
    d.chmod(0o755)
    (d / "builds").mkdir()
    os.chown(d, sudo_user.pw_uid, sudo_user.pw_gid)
    os.chown(d / "builds", sudo_user.pw_uid, sudo_user.pw_gid)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sudo_fleet(fleet, podman, home, sudo_user):
    """start(**sections): a Worker run as USER on fleet's Redis and namespace; stopped at teardown."""
    # Cleanup of containers goes through podman as root: the same storage.
    if podman not in fleet.runtimes:
        fleet.runtimes.append(podman)

    def start(env=None, **sections):
        base = ini_sections(fleet.redis_url, fleet.ns, home / "builds", worker=dict(QUICK_WORKER, concurrency=2),
                            sandbox={"runtime": "podman", "image": TEST_IMAGE, "sudo": "yes", "stop_grace": 2})
        base = merge(base, sections)
        ini = write_ini(home / f"worker-{len(fleet.workers)}.ini", base)
        os.chmod(ini, 0o644)
        e = {"PATH": "/usr/local/bin:/usr/bin:/bin", "CONTAINERS_CONF": CONTAINERS_CONF, "LANG": "C.UTF-8"}
        e.update(env or {})
        # As USER (setpriv drops root before exec), in home.
        w = Worker(ini, env=e, logdir=fleet.tmp, cwd=str(home),
                   wrap=["setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--"]).start()
        fleet.workers.append(w)
        started.append(w)
        return w
    started = []
    yield start
    # Before `home` goes: the workers use it.
    for w in started:
        w.stop(timeout=20)


def profile(root, name, **conf):
    make_profile(root, name, **conf)
    for p in [root / name, *(root / name).rglob("*")]:
        os.chown(p, pwd.getpwnam(USER).pw_uid, -1)
    return name


def test_sudo_podman_oom_timeout_cancel(sudo_fleet, r, ns, home):
    builds = home / "builds"
    profile(builds, "hog", mode="hog", hog_mb=512)
    profile(builds, "hang", mode="hang")
    w = sudo_fleet()
    w.wait_log(r"redis cmd: connected", 60)
    assert "runtime podman" in w.log()
    hog = submit(r, ns, profile="hog", output="o-hog", memory="64m")
    res = wait_result(r, ns, hog, 90)
    # mkarchiso exits 1 after its step was killed: only the cgroup can tell.
    assert res["status"] == "oom_killed", (res, w.log())
    assert res["exit_code"] == 1, res
    assert "cannot watch" not in w.log()
    # Timeout and cancel, two at once.
    t0 = time.time()
    tmo = submit(r, ns, profile="hang", output="o-t", timeout=3)
    can = submit(r, ns, profile="hang", output="o-c", timeout=120)
    w.wait_log(r"job %s: started" % can, 60)
    r.hset(nskey(ns, "cancel"), can, str(time.time()))
    rt, rc = wait_result(r, ns, tmo, 60), wait_result(r, ns, can, 60)
    assert rt["status"] == "timed_out", rt
    assert rc["status"] == "cancelled", rc
    assert time.time() - t0 < 45 * SLOW
    assert w.stop() == 0, w.log()


def test_sudo_podman_drain_and_env_allow(sudo_fleet, r, ns, home):
    builds = home / "builds"
    profile(builds, "hang", mode="hang")
    token = "tok-" + os.urandom(8).hex()
    p = builds / profile(builds, "env")
    script = p / "airootfs" / "root" / "customize_airootfs.sh"
    script.parent.mkdir(parents=True)
    script.write_text(f'echo "seen:$(printf %s "${TOKEN_VAR}" | sha256sum | cut -c1-16)"\n')
    w = sudo_fleet(env={TOKEN_VAR: token}, worker={"drain_timeout": 1},
                   sandbox={"env_allow": TOKEN_VAR})
    w.wait_log(r"redis cmd: connected", 60)
    # The value gets through sudo (--preserve-env=NAME) and podman (--env=NAME).
    env_job = submit(r, ns, profile="env", output="o-env")
    assert wait_result(r, ns, env_job, 60)["status"] == "succeeded"
    lines = [x for ev in stream_events(r, ns, env_job) if ev.get("type") == "log" for x in ev.get("lines", [])]
    assert "seen:" + hashlib.sha256(token.encode()).hexdigest()[:16] in lines, lines
    assert token not in w.log()
    # Drain: the hanging build is stopped after drain_timeout, goes back, and the worker exits.
    jid = submit(r, ns, profile="hang", output="o-d", timeout=120)
    w.wait_log(r"job %s: started" % jid, 60)
    time.sleep(1)
    # sudo's and podman's command lines name the variable, never its value.
    for d in os.listdir("/proc"):
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes() if d.isdigit() else b""
        except OSError:
            continue
        assert token.encode() not in argv, f"pid {d} shows the value: {argv!r}"
    t0 = time.time()
    w.signal(signal.SIGTERM)
    assert w.wait(60) == 0, w.log()
    assert time.time() - t0 < 40 * SLOW
    assert r.llen(nskey(ns, "queue")) == 1
    assert r.llen(nskey(ns, "result", jid)) == 0
