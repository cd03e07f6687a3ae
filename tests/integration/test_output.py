"""A build's output on its way out, against a
real worker and a real redis-server:

- phase lines only move the phase forward: a build alternating two phase
  lines 600,000 times sends at most nphases phase events, the log caps hold
  and the worker's memory stays small;
- every str the worker writes is valid UTF-8: log lines, log_tail, artifact
  names, errors (with the runtime's detail from the output) and phase lines
  decode with Python's strict msgpack.unpackb(), with U+FFFD where the build
  printed ill-formed bytes, and an 8 KiB split never cuts a character;
- enqueue escapes control characters of build output on a terminal (a pty
  here), passes them with --raw, and passes them to a pipe.
"""
import os
import pty
import re
import select
import subprocess
import time

import msgpack

from tests.harness import (ENQUEUE_BIN, SANITIZED, SLOW, make_profile, nskey, sanitizer_report, submit,
                           write_script)


R = "\ufffd"


def raw_stream(r, ns: str, job_id: str) -> list:
    return [f[b"event"] for _, f in r.xrange(nskey(ns, "log", job_id))]


def strict_events(r, ns: str, job_id: str) -> list:
    """Every event of the stream, decoded as PROTOCOL.md's example does (strict UTF-8)."""
    return [msgpack.unpackb(raw) for raw in raw_stream(r, ns, job_id)]


def strict_result(r, ns: str, job_id: str, timeout: float = 60) -> dict:
    key = nskey(ns, "result", job_id)
    got = r.blmove(key, key, int(timeout * SLOW), "RIGHT", "LEFT")  # left in place for enqueue
    assert got is not None, f"no result for {job_id} within {timeout * SLOW}s"
    return msgpack.unpackb(got)


def log_lines(evs: list, stream: str | None = None) -> list:
    return [line for e in evs if e["type"] == "log" and stream in (None, e["stream"]) for line in e["lines"]]


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set of a process, from /proc (kB)."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ---------------------------------------------------------------- phase lines

def test_phase_flood_sends_each_phase_once_within_caps(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    # 600,000 lines: the first two phases' lines, alternately, as fast as awk goes.
    cmd = write_script(tmp_path, "awk 'BEGIN { for (i = 0; i < 300000; i++) {"
                                 " print \"[mkarchiso] INFO: Validating options...\";"
                                 " print \"[mkarchiso] INFO: Installing packages\" } }'\n"
                                 "echo '[mkarchiso] INFO: Creating ISO image...'\n"
                                 "echo '[mkarchiso] INFO: Validating options... again'\n")
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"log_max_lines": 1000})
    w.wait_log(r"worker \S+ ")
    before = vm_hwm_kib(w.pid)
    jid = submit(r, ns, profile="p", output="o")
    res = strict_result(r, ns, jid, 120)
    assert res["status"] == "succeeded", res
    evs = strict_events(r, ns, jid)
    phases = [e for e in evs if e["type"] == "phase"]
    # Forward only: validate, packages, then iso; the lines of earlier phases are ignored.
    assert [(e["name"], e["line"]) for e in phases] == [
        ("validate", "[mkarchiso] INFO: Validating options..."),
        ("packages", "[mkarchiso] INFO: Installing packages"),
        ("iso", "[mkarchiso] INFO: Creating ISO image..."),
    ]
    assert r.hget(nskey(ns, "job", jid), "phase") == b"iso"
    # The log cap holds: 1000 lines published, the rest counted.
    published = log_lines(evs)
    assert len(published) == 1000
    assert len(published) + res["dropped_lines"] == 600002
    assert sum(e.get("dropped", 0) for e in evs if e["type"] == "log") <= res["dropped_lines"]
    assert len(evs) < 200, f"{len(evs)} events for 1000 lines and 3 phases"
    # The worker's peak memory hardly moves (measured: +0.2 MiB; it was 458 MB before).
    # Under ASan the quarantine keeps every freed tail line, so RSS says nothing there.
    peak = vm_hwm_kib(w.pid)
    if not SANITIZED:
        assert peak - before < 8 * 1024, f"VmHWM {before} kB -> {peak} kB"


# ---------------------------------------------------------------- valid UTF-8

# What the hostile builds print: ill-formed bytes of each kind, as printf(1) octal escapes.
BAD_LINES = [
    (r"stray \377 byte", f"stray {R} byte"),
    (r"overlong \300\257 and \340\200\257", f"overlong {R}{R} and {R}{R}{R}"),
    (r"surrogate \355\240\200 beyond \364\220\200\200", f"surrogate {R}{R}{R} beyond {R}{R}{R}{R}"),
    (r"cut \342\202 short \360\237\230", f"cut {R} short {R}"),
    (r"fine caf\303\251 \360\237\230\200", "fine caf\u00e9 \U0001F600"),
]


def print_bad(out: str = "") -> str:
    return "".join(f"printf '{src}\\n'{out}\n" for src, _ in BAD_LINES)


def test_ill_formed_output_becomes_fffd_everywhere_exec(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, print_bad() + print_bad(" >&2") +
                       # A phase line with a stray byte in it.
                       "printf '[mkarchiso] INFO: Validating options \\377\\n'\n"
                       # 8190 bytes, then a 4-byte character across the 8 KiB split point.
                       "awk 'BEGIN { s = \"\"; for (i = 0; i < 8190; i++) s = s \"a\"; printf \"%s\", s }'\n"
                       "printf '\\360\\237\\230\\200tail\\n'\n"
                       # Again ending at 8192 bytes, with the pipe giving only 3 of its 4 bytes at first.
                       "awk 'BEGIN { s = \"\"; for (i = 0; i < 8189; i++) s = s \"b\"; printf \"%s\", s }'\n"
                       "printf '\\360\\237\\230'; sleep 0.3; printf '\\200later\\n'\n"
                       # 8192 stray bytes: each becomes 3, so the pieces are cut by the sanitized size.
                       "head -c 8192 /dev/zero | tr '\\0' '\\377'; echo\n"
                       # An artifact whose name is not UTF-8.
                       "echo iso > \"$DEBATE_OUTPUT/$(printf 'name\\377\\300.iso')\"\n"
                       "exit 3\n")
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    jid = submit(r, ns, profile="p", output="o")
    res = strict_result(r, ns, jid, 30)
    evs = strict_events(r, ns, jid)
    assert evs[-1]["type"] == "finished" and evs[-1]["result"] == res
    assert res["status"] == "failed" and res["exit_code"] == 3

    want = [clean for _, clean in BAD_LINES]
    out, err = log_lines(evs, "stdout"), log_lines(evs, "stderr")
    assert out[:len(want)] == want and err == want
    phase = [e for e in evs if e["type"] == "phase"]
    assert phase[0]["name"] == "validate" and phase[0]["line"] == f"[mkarchiso] INFO: Validating options {R}"
    # The straddling character moves whole to the second piece.
    i = out.index("a" * 8190)
    assert out[i + 1] == "\U0001F600tail"
    assert out[i + 2:i + 4] == ["b" * 8189, "\U0001F600later"]
    # 8192 U+FFFD are 24576 bytes: pieces of 2730 characters (8190 bytes), never over 8 KiB.
    pieces = out[i + 4:i + 8]
    assert [len(p) for p in pieces] == [2730, 2730, 2730, 2] and set("".join(pieces)) == {R}
    assert all(len(line.encode()) <= 8192 for line in out + err)
    assert res["artifacts"][0]["name"] == f"name{R}{R}.iso" and res["artifacts"][0]["size"] == 4
    assert want[0] in res["log_tail"] and R * 2 in res["log_tail"]
    # The job hash fields are UTF-8 too.
    for v in r.hgetall(nskey(ns, "job", jid)).values():
        v.decode()


def test_ill_formed_output_and_runtime_error_detail_podman(fleet, r, ns, broot, podman):
    """A container build (customize_airootfs.sh) that prints ill-formed bytes and
    escape sequences, writes a file with a non-UTF-8 name and exits 125, which
    podman passes on: an `error` status whose message quotes the build's last
    "Error" line.  Every event and the result decode strictly; the worker's own
    log holds no control bytes and is valid UTF-8."""
    make_profile(broot, "p")
    hook = broot / "p" / "airootfs" / "root"
    hook.mkdir(parents=True)
    (hook / "customize_airootfs.sh").write_text(
        print_bad() +
        "printf '[mkarchiso] INFO: Creating SquashFS image \\377\\n'\n"
        "touch \"$OUT_DIR/$(printf 'name\\377.iso')\"\n"
        "printf 'Error: evil \\033]0;owned\\007 \\033[2J \\377 detail\\n' >&2\n"
        "exit 125\n")
    w = fleet.start(runtime=podman)
    jid = submit(r, ns, profile="p", output="o")
    res = strict_result(r, ns, jid, 90)
    evs = strict_events(r, ns, jid)
    assert evs[-1]["type"] == "finished" and evs[-1]["result"] == res
    assert res["status"] == "error", res
    assert res["error"].startswith("the container runtime failed (exit 125): Error: evil ")
    assert f"\x1b[2J {R} detail" in res["error"]
    lines = log_lines(evs, "stdout")
    for _, clean in BAD_LINES:
        assert clean in lines
    phases = {e["name"]: e["line"] for e in evs if e["type"] == "phase"}
    assert phases["squashfs"] == f"[mkarchiso] INFO: Creating SquashFS image {R}"
    assert [a["name"] for a in res["artifacts"]] == [f"name{R}.iso"]
    w.wait_log(rf"job {jid}: error")
    log = w.logpath.read_bytes()
    log.decode()     # valid UTF-8
    assert re.search(rb"[\x00-\x08\x0b-\x1f\x7f]", log) is None, "control bytes in the worker's log"
    assert b"Error: evil ?]0;owned? ?[2J" in log


# ---------------------------------------------------------------- control characters on a terminal

EVIL = b"\x1b]0;evil\x07 and \x1b[2J"


def run_tty(argv: list, timeout: float = 30) -> tuple:
    """Run argv with stdout on a pty; (exit code, what the terminal got, stderr)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                         env=dict(os.environ, NO_COLOR="1"))
    os.close(slave)
    out = b""
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if p.poll() is not None:
                break
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError:     # EIO: the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    rc = p.wait(timeout)
    assert sanitizer_report(err) is None, err
    return rc, out.replace(b"\r\n", b"\n"), err


def test_enqueue_escapes_build_output_on_a_terminal(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, "printf 'title \\033]0;evil\\007 and \\033[2J\\n'\n"
                                 "printf 'c1 \\302\\233 del \\177 cr \\r! tab\\tok\\n' >&2\n")
    ini = fleet.ini(sandbox={"runtime": "exec", "command": cmd})
    fleet.start(ini=ini)
    jid = submit(r, ns, profile="p", output="o")
    assert strict_result(r, ns, jid, 30)["status"] == "succeeded"
    enq = [ENQUEUE_BIN, "-c", ini]

    for what in (["logs", jid], ["status", jid]):
        rc, out, err = run_tty(enq + what)
        assert rc == 0, err
        assert b"\x1b" not in out and b"\x07" not in out and b"\x7f" not in out, out
        assert b"title \\x1b]0;evil\\x07 and \\x1b[2J\n" in out, out
        assert b"c1 \\u009b del \\x7f cr \\x0d! tab\tok\n" in out, out

        rc, out, err = run_tty(enq + what + ["--raw"])
        assert rc == 0, err
        assert b"title " + EVIL + b"\n" in out
        assert b"c1 \xc2\x9b del \x7f cr \r! tab\tok" in out

        # To a pipe the bytes pass unchanged.
        p = subprocess.run(enq + what, capture_output=True, timeout=30 * SLOW)
        assert p.returncode == 0 and sanitizer_report(p.stderr.decode(errors="replace")) is None
        assert b"title " + EVIL + b"\n" in p.stdout


def test_enqueue_help_names_raw() -> None:
    p = subprocess.run([ENQUEUE_BIN, "--help"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "--raw" in p.stdout
    for cmd in ("logs", "watch", "status"):
        p = subprocess.run([ENQUEUE_BIN, cmd, "--help"], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "--raw" in p.stdout, p.stdout


def test_enqueue_escapes_what_anyone_can_write_to_redis(fleet, r, ns):
    """A heartbeat hash or a dead letter written by a hostile queue writer:
    `enqueue workers`, `top` and `dead` show its control characters escaped
    on a terminal, as they do build output."""
    ini = fleet.ini()
    now = time.time()
    wid = "evil-1"
    r.hset(nskey(ns, "worker", wid), mapping={
        "id": wid, "host": "h\x1b]0;pwned\x07", "pid": 1, "version": "1\x1b[2J", "started_at": now,
        "beat": now, "concurrency": 1, "running": 0, "jobs": ""})
    r.zadd(nskey(ns, "workers"), {wid: now})
    r.lpush(nskey(ns, "dead"), msgpack.packb({"reason": "bad_id", "error": "id", "payload": b"x",
                                             "id": "x\x1b[2J", "worker": wid, "ts": now}))
    enq = [ENQUEUE_BIN, "-c", ini]
    for what in (["workers"], ["dead"], ["top", "--once"]):
        rc, out, err = run_tty(enq + what)
        assert rc == 0, (what, err)
        assert b"\x1b]" not in out and b"\x1b[2J" not in out and b"\x07" not in out, (what, out)
    rc, out, _ = run_tty(enq + ["workers"])
    assert b"h\\x1b]0;pwned\\x07" in out and b"1\\x1b[2J" in out, out
