"""Artifact collection against a hostile output tree.

The real worker (exec runtime for most cases, podman for one) collects
an output directory that holds symlinks into /dev, FIFOs, sockets, a
1 TiB sparse file, too many files or too deep a tree, a file whose every
read fails (a FUSE filesystem), or that a process rearranges while the
worker walks it.  Each must end in a result saying what happened, soon,
with the worker's loop alive: never a hang, a frozen heartbeat, or a
sha256 of something that is not the artifact.
"""
import datetime
import hashlib
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.harness import SLOW, make_profile, nskey, stream_events, submit, wait_result, write_script


HERE = Path(__file__).resolve().parent


def script(tmp_path, body, name="build.sh"):
    """A build command that runs body in its output directory, stopping at the first error."""
    return write_script(tmp_path, "set -e\ncd \"$DEBATE_OUTPUT\"\n" + body, name)


def sha(b):
    return hashlib.sha256(b).hexdigest()


def zeros_sha(n):
    h = hashlib.sha256()
    block = bytes(1 << 20)
    while n > 0:
        h.update(block[:min(n, len(block))])
        n -= len(block)
    return h.hexdigest()


def collecting(w, jid, timeout=30):
    """Wait until the worker starts collecting jid's artifacts."""
    w.wait_log(rf"job {jid}: \w+ -> collecting", timeout=timeout)


# A unix socket in the output, from the build (sh cannot make one).
SOCKET_PY = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])")


def test_special_entries_are_not_listed(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = script(tmp_path, 'printf iso > a.iso\nmkdir sub\nprintf b > sub/b.txt\n'
                           'ln -s /dev d\nln -s /dev/zero zero\nln -s a.iso link.iso\n'
                           'mkfifo fifo\nmkfifo sub/fifo2\n'
                           f'{sys.executable} -c "{SOCKET_PY}" sock\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o"), 30)
    assert res["status"] == "succeeded", res
    assert res["artifacts"] == [{"name": "a.iso", "size": 3, "sha256": sha(b"iso")},
                                {"name": "sub/b.txt", "size": 1, "sha256": sha(b"b")}]


def test_tree_swapped_during_collection(fleet, r, ns, broot, tmp_path):
    """A directory becomes a symlink to /dev, a file a FIFO, while the worker hashes."""
    make_profile(broot, "p")
    big = 256 << 20
    cmd = script(tmp_path, f'truncate -s {big} big.bin\nmkdir d\nprintf z > d/zero\nprintf f > f\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    jid = submit(r, ns, profile="p", output="o")
    collecting(w, jid)
    out = broot / "o"
    # The swap: what a process the build left behind (or a racing build) does.
    subprocess.run(["rm", "-rf", str(out / "d")], check=True)
    os.symlink("/dev", out / "d")
    os.unlink(out / "f")
    os.mkfifo(out / "f")
    res = wait_result(r, ns, jid, 60)
    assert res["status"] == "succeeded", res
    arts = {a["name"]: a for a in res["artifacts"]}
    assert arts["big.bin"] == {"name": "big.bin", "size": big, "sha256": zeros_sha(big)}
    # d/zero and f are listed only if the walk got there before the swap, as what they were.
    assert set(arts) <= {"big.bin", "d/zero", "f"}
    if "d/zero" in arts:
        assert arts["d/zero"] == {"name": "d/zero", "size": 1, "sha256": sha(b"z")}
    if "f" in arts:
        assert arts["f"] == {"name": "f", "size": 1, "sha256": sha(b"f")}
    assert w.alive()


def test_sparse_1tib_is_over_the_byte_cap(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = script(tmp_path, "printf x > small\ntruncate -s 1T huge\n")
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    t0 = time.time()
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o"), 30)
    assert time.time() - t0 < 20 * SLOW
    assert res["status"] == "error", res
    assert res["error"] == "output has more than 64.0 GiB of files (collect_max_bytes)"
    assert res["artifacts"] == []
    h = r.hgetall(nskey(ns, "job", res['id']))
    assert h[b"state"] == b"error" and h[b"error"] == res["error"].encode()


def test_file_and_depth_caps(fleet, r, ns, broot, tmp_path):
    """The defaults: 10000 entries, 32 levels; one more is an error, not a shorter list."""
    make_profile(broot, "p")
    cmd = script(tmp_path, 'case "$DEBATE_OUTPUT" in\n'
                           '*/files-ok) seq -f "f%05g" 1 10000 | xargs touch ;;\n'
                           '*/files-over) seq -f "f%05g" 1 10001 | xargs touch ;;\n'
                           '*/deep-*) n=${DEBATE_OUTPUT##*-}; p=.; i=0\n'
                           '  while [ $i -lt "$n" ]; do p=$p/d; i=$((i + 1)); done\n'
                           '  mkdir -p "$p"; printf deep > "$p/leaf" ;;\n'
                           'esac\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    got = {}
    for key in ("files-ok", "files-over", "deep-32", "deep-33"):
        got[key] = submit(r, ns, profile="p", output=f"o/{key}")
    got = {k: wait_result(r, ns, v, 60) for k, v in got.items()}
    ok = got["files-ok"]
    assert ok["status"] == "succeeded", ok["error"]
    assert len(ok["artifacts"]) == 10000 and ok["artifacts"][-1]["name"] == "f10000"
    over = got["files-over"]
    assert over["status"] == "error" and over["artifacts"] == []
    assert over["error"] == "output has more than 10000 files (collect_max_files)"
    ok = got["deep-32"]
    assert ok["status"] == "succeeded", ok
    assert ok["artifacts"] == [{"name": "d/" * 32 + "leaf", "size": 4, "sha256": sha(b"deep")}]
    over = got["deep-33"]
    assert over["status"] == "error" and over["artifacts"] == []
    assert over["error"] == "output has directories nested more than 32 deep (collect_max_depth)"


@pytest.fixture
def eio_output(broot):
    """builds_root/eio: a FUSE mount whose bad.bin fails every read with EIO."""
    if importlib.util.find_spec("fusepy") is None:
        pytest.fail("python3-fusepy is not installed (scripts/install-deps installs it)")
    if not os.path.exists("/dev/fuse"):
        pytest.fail("no /dev/fuse: the read-error test needs FUSE")
    mp = broot / "eio"
    mp.mkdir()
    p = subprocess.Popen(["/usr/bin/python3", str(HERE / "eiofs.py"), str(mp)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.time() + 10
        while not os.path.ismount(mp):
            assert p.poll() is None and time.time() < deadline, p.stderr.read().decode(errors="replace")
            time.sleep(0.05)
        yield "eio"
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if os.path.ismount(mp):
            subprocess.run(["umount", "-l", str(mp)], check=False)
        p.stderr.close()


def test_read_error_is_an_error_not_a_sha256(fleet, r, ns, broot, tmp_path, eio_output):
    make_profile(broot, "p")
    assert (broot / "eio" / "good.txt").read_bytes() == b"hello\n"
    fleet.start(sandbox={"runtime": "exec", "command": "/bin/true"})
    res = wait_result(r, ns, submit(r, ns, profile="p", output=eio_output), 30)
    assert res["status"] == "error", res
    assert res["error"] == "reading artifact bad.bin: Input/output error"
    assert res["artifacts"] == []


def test_cancel_during_collection(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = script(tmp_path, "truncate -s 16G big.bin\n")
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    jid = submit(r, ns, profile="p", output="o")
    collecting(w, jid)
    t0 = time.time()
    r.hset(nskey(ns, "cancel"), jid, time.time())
    res = wait_result(r, ns, jid, 30)
    took = time.time() - t0
    assert res["status"] == "cancelled", res
    assert res["error"] == "cancelled while collecting the artifacts"
    assert res["artifacts"] == []
    assert took < 10 * SLOW, took
    assert not r.hexists(nskey(ns, "cancel"), jid)
    assert r.hget(nskey(ns, "job", jid), "state") == b"cancelled"


def test_collection_deadline(fleet, r, ns, broot, tmp_path):
    """What is left of the job's timeout, at least collect_timeout: then an error."""
    make_profile(broot, "p")
    cmd = script(tmp_path, "truncate -s 16G big.bin\n")
    fleet.start(sandbox={"runtime": "exec", "command": cmd, "collect_timeout": 1})
    t0 = time.time()
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o", timeout=2, warning=1), 30)
    took = time.time() - t0
    assert res["status"] == "error", res
    assert re.fullmatch(r"collecting the artifacts took longer than [12] s", res["error"]), res["error"]
    assert res["artifacts"] == []
    assert took < 10 * SLOW, took


@pytest.mark.slow
def test_100k_tiny_files_loop_stays_responsive(fleet, r, ns, broot, tmp_path):
    """100,000 files are all listed; meanwhile the heartbeat and another job's log go on."""
    make_profile(broot, "p")
    n = 100000
    # One command for both jobs: the "ticker" prints until the marker file appears.
    marker = tmp_path / "stop-ticking"
    cmd = script(tmp_path, 'case "$DEBATE_OUTPUT" in\n'
                           f'*/ticker) i=0; while [ ! -e "{marker}" ]; do echo "tick $i"; '
                           'i=$((i + 1)); sleep 0.1; done ;;\n'
                           f'*) {sys.executable} -c "\nfor i in range({n}):\n'
                           '    open(\'t%06d\' % i, \'w\').write(str(i))\n" ;;\nesac\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd, "collect_max_files": 200000,
                             "timeout": 600, "max_timeout": 600, "warning": 500},
                    worker={"concurrency": 2})
    wid = w.wait_log(r"worker (\S+) ").group(1)
    ticker = submit(r, ns, profile="p", output="ticker")
    beats = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            b = r.hget(nskey(ns, "worker", wid), "beat")
            beats.append((time.time(), b))
            time.sleep(0.1)

    try:
        w.wait_log(rf"job {ticker}: started")
        jid = submit(r, ns, profile="p", output="many")
        collecting(w, jid, 120)     # making 100,000 files takes a while on a busy machine
        t0 = time.time()
        th = threading.Thread(target=sample, daemon=True)
        th.start()
        try:
            res = wait_result(r, ns, jid, 150)
        finally:
            took = time.time() - t0
            stop.set()
            th.join()
    finally:
        marker.touch()
    # The walk itself, from the worker's own log stamps (state changes are logged at debug).
    stamps = [datetime.datetime.fromisoformat(w.wait_log(rf"(\S+) worker\[\d+\] debug: job {jid}: "
                                                         rf"\w+ -> {s}\b").group(1).rstrip("Z"))
              for s in ("collecting", "finishing")]
    print(f"\ncollecting {n} tiny files took {(stamps[1] - stamps[0]).total_seconds():.2f} s "
          f"({took:.1f} s from the log line to the result)")
    assert res["status"] == "succeeded", res["error"]
    assert len(res["artifacts"]) == n
    assert res["artifacts"][0] == {"name": "t000000", "size": 1, "sha256": sha(b"0")}
    assert res["artifacts"][-1] == {"name": "t099999", "size": 5, "sha256": sha(b"99999")}
    # The heartbeat (every 1 s) kept changing while we collected.
    changes = [t for (t, b), (_, prev) in zip(beats[1:], beats) if b != prev]
    edges = [t0] + changes + [t0 + took]
    assert max(b - a for a, b in zip(edges, edges[1:])) < 3 * SLOW, (took, changes)
    # And the other job's output kept flowing: log events stamped during the collection.
    tres = wait_result(r, ns, ticker, 30)
    assert tres["status"] == "succeeded", tres
    logs = [e for e in stream_events(r, ns, ticker) if e["type"] == "log"]
    during = [e["ts"] for e in logs if t0 <= e["ts"] <= t0 + took]
    assert len(during) >= int(took / 0.5) - 1, (took, during)


def test_podman_hostile_output(fleet, r, ns, broot, podman):
    """Under podman the build leaves /dev symlinks, FIFOs, a socket, then a 1 TiB sparse file."""
    for name, extra in (("p-special", ""), ("p-huge", "truncate -s 1099511627776 \"$OUT_DIR/huge\"\n")):
        make_profile(broot, name, mode="ok", seconds=0)
        cz = broot / name / "airootfs" / "root"
        cz.mkdir(parents=True)
        (cz / "customize_airootfs.sh").write_text(
            'mkdir -p "$OUT_DIR/sub"\nprintf x > "$OUT_DIR/sub/x"\n'
            'ln -s /dev "$OUT_DIR/d"\nln -s /dev/zero "$OUT_DIR/zero"\n'
            'mkfifo "$OUT_DIR/fifo"\n(nc -lU "$OUT_DIR/sock" </dev/null >/dev/null 2>&1 &)\n'
            'sleep 0.2\n' + extra)
    fleet.start(podman)
    ja = submit(r, ns, profile="p-special", output="out/a", memory="256m", cpus=1)
    jb = submit(r, ns, profile="p-huge", output="out/b", memory="256m", cpus=1)
    ra = wait_result(r, ns, ja, 90)
    rb = wait_result(r, ns, jb, 90)
    assert ra["status"] == "succeeded", ra
    names = [a["name"] for a in ra["artifacts"]]
    assert len(names) == 2 and names[0].endswith(".iso") and names[1] == "sub/x", names
    assert ra["artifacts"][1] == {"name": "sub/x", "size": 1, "sha256": sha(b"x")}
    iso = broot / "out/a" / names[0]
    assert ra["artifacts"][0]["sha256"] == sha(iso.read_bytes())
    assert rb["status"] == "error", rb
    assert rb["error"] == "output has more than 64.0 GiB of files (collect_max_bytes)"
    assert rb["artifacts"] == []


def test_collection_not_starved_by_a_flooding_job(fleet, r, ns, broot, tmp_path):
    """Another job flooding its output: the walk still gets its slice every loop turn
    (tests/unit/test_collect.c test_not_starved checks the same deterministically)."""
    make_profile(broot, "p")
    flood_for = int(12 * SLOW)
    cmd = script(tmp_path, 'case "$DEBATE_OUTPUT" in\n'
                           f'*/flood) yes flood & sleep {flood_for}; kill $! ;;\n'
                           '*) truncate -s 96M big.bin ;;\nesac\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd, "collect_timeout": 8 * SLOW},
                    worker={"concurrency": 2, "log_max_lines": 1000})
    flood = submit(r, ns, profile="p", output="flood")
    w.wait_log(rf"job {flood}: started")
    time.sleep(0.5)
    jid = submit(r, ns, profile="p", output="hash", timeout=8 * SLOW, warning=1)
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "succeeded", res
    assert res["artifacts"] == [{"name": "big.bin", "size": 96 << 20, "sha256": zeros_sha(96 << 20)}]
    # The flood was still going: collecting did not wait for it to end.
    assert r.hget(nskey(ns, "job", flood), "state") == b"running"
    r.hset(nskey(ns, "cancel"), flood, time.time())
    assert wait_result(r, ns, flood, 30)["status"] == "cancelled"
