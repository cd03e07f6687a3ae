"""Stopping a build whose runtime will not die.

A fake container runtime (a shell script whose name says podman) stands in
for `sudo -n podman` at its worst: its `run` ignores SIGTERM, SIGINT and
SIGHUP and leaves a process in a session of its own holding stdout and
stderr open (as the root runtime does when the worker can only kill sudo),
and its `stop` and `kill` hang.  Timeout, cancel and drain must still end
every job within bounded time with the right outcome, and the worker must
exit on the drain.  Real redis-server and worker; every process the fake
starts is killed by pid at teardown.
"""
import os
import signal
import time
from pathlib import Path

import pytest

from tests.harness import SLOW, Runtime, make_profile, nskey, submit, wait_result


FAKE = r"""#!/bin/sh
# Fake runtime for test_stop.py: logs every call, then misbehaves.
dir=@DIR@
echo "$$ $*" >> "$dir/calls"
case "$1" in
run)
    trap '' TERM INT HUP
    echo "fake: build running"
    echo "fake: on stderr" >&2
    setsid sleep 300 &
    echo "$!" >> "$dir/pids"
    while :; do sleep 1; done
    ;;
stop | kill)
    trap '' TERM INT HUP
    exec sleep 300
    ;;
*)
    exit 0
    ;;
esac
"""


@pytest.fixture
def fake_runtime(tmp_path):
    d = tmp_path / "fake"
    d.mkdir()
    path = d / "fake-podman"
    path.write_text(FAKE.replace("@DIR@", str(d)))
    path.chmod(0o755)
    rt = Runtime("fake-podman", [str(path)], dict(os.environ),
                 {"runtime": str(path), "image": "fake:latest", "sudo": "no"})
    yield rt, d
    # Everything the fake left: the session-holding sleeps and the hung helpers.
    pids = []
    for name in ("pids", "calls"):
        f = d / name
        if f.exists():
            pids += [int(line.split()[0]) for line in f.read_text().splitlines() if line.strip()]
    for pid in pids:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"sleep" in cmd or str(path).encode() in cmd:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def cancel(r, ns, job_id):
    r.hset(nskey(ns, "cancel"), job_id, str(time.time()))


def test_unkillable_runtime_timeout_cancel_drain(fleet, r, ns, broot, fake_runtime):
    rt, d = fake_runtime
    make_profile(broot, "p")
    w = fleet.start(rt, worker={"concurrency": 3, "drain_timeout": 1},
                    sandbox={"stop_grace": 1, "timeout": 300, "max_timeout": 300})
    w.wait_log(r"redis cmd: connected")
    t0 = time.time()
    a = submit(r, ns, profile="p", output="a", timeout=2)
    b = submit(r, ns, profile="p", output="b")
    c = submit(r, ns, profile="p", output="c")
    for jid in (a, b, c):
        w.wait_log(r"job %s: started" % jid, 30)
    cancel(r, ns, b)
    w.wait_log(r"job %s: timed out" % a, 20)
    w.wait_log(r"job %s: cancelled; stopping it" % b, 20)
    # Drain now: c runs on, past drain_timeout, then is stopped like the others.
    w.signal(signal.SIGTERM)
    ra = wait_result(r, ns, a, 60)
    rb = wait_result(r, ns, b, 60)
    assert ra["status"] == "timed_out", ra
    assert rb["status"] == "cancelled", rb
    assert w.wait(60) == 0, w.log()
    elapsed = time.time() - t0
    # Stop stages (grace 1 + 10 s, then 5 s) plus the 3 s EOF deadline, with room.
    assert elapsed < 50 * SLOW, f"took {elapsed:.0f} s"
    log = w.log()
    # c went back on the queue, with no result.
    assert r.llen(nskey(ns, "result", c)) == 0
    assert r.llen(nskey(ns, "queue")) == 1, log
    for jid in (a, b, c):
        assert f"job {jid}: still running 11 s after the stop; killing the container" in log, log
        assert f"job {jid}: the runtime client (pid" in log, log
        assert (f"job {jid}: its stdout and stderr are still open 3 s after the runtime client exited"
                in log), log
    # The hung stop helper was given up on (its deadline: stop_grace + 15 s).
    assert "stop --time=1" in log and "still runs after 16 s; stopping it" in log, log
    # The runtime was asked to stop, then to kill, each container by name.
    calls = (d / "calls").read_text()
    for jid in (a, b, c):
        assert f"stop --time=1 {ns}-build-{jid}" in calls, calls
        assert f"kill --signal=KILL {ns}-build-{jid}" in calls, calls
        assert f"rm --force {ns}-build-{jid}" in calls, calls
