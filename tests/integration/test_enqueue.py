"""The enqueue CLI against a real redis-server, checked the way the FastAPI
backend and the dashboards see Redis: with redis-py and msgpack.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_enqueue.py
(ENQUEUE_BIN=build/asan/enqueue/enqueue for the sanitizer build).
"""
import hashlib
import json
import os
import re
import signal
import subprocess
import time

import msgpack
import pytest

from tests.harness import SLOW, free_port, nskey, poll, sanitizer_report


@pytest.fixture
def r(redis_server):
    return redis_server.client()


@pytest.fixture
def profile(builds_root):
    (builds_root / "profiles" / "releng").mkdir(parents=True)
    return "profiles/releng"


def queued_jobs(r, ns):
    """The queue's payloads, oldest (taken next) first."""
    return [msgpack.unpackb(p, raw=False) for p in reversed(r.lrange(nskey(ns, "queue"), 0, -1))]


def finish(p, timeout=20):
    """Wait for a background enqueue: (stdout, stderr), with no sanitizer report."""
    out, err = p.communicate(timeout=timeout * SLOW)
    assert sanitizer_report(err) is None, err
    return out, err


def result_map(job_id, status, exit_code=0, **extra):
    res = {"id": job_id, "status": status, "exit_code": exit_code, "duration": 12.5,
           "started_at": time.time() - 12.5, "finished_at": time.time(), "worker": "w1",
           "attempt": 1, "artifacts": [{"name": "archlinux.iso", "size": 1048576,
                                        "sha256": "ab" * 32}],
           "error": "" if status == "succeeded" else f"build {status}",
           "log_tail": ["last line"], "dropped_lines": 0, "meta": {"user": 7}}
    res.update(extra)
    return res


class Emitter:
    """Sends a job's events the way the worker does: stream, then channels."""

    def __init__(self, r, ns, job_id):
        self.r, self.ns, self.id, self.seq = r, ns, job_id, 0
        self.t0 = time.time()

    def emit(self, typ, at=0.0, **fields):
        self.seq += 1
        ev = {"id": self.id, "seq": self.seq, "ts": self.t0 + at, "type": typ, "attempt": 1, **fields}
        raw = msgpack.packb(ev, use_bin_type=True)
        self.r.xadd(nskey(self.ns, "log", self.id), {"seq": self.seq, "type": typ, "event": raw})
        self.r.publish(nskey(self.ns, "progress", self.id), raw)
        if typ != "log":
            self.r.publish(nskey(self.ns, "events"), raw)
        return ev

    def build(self, status="succeeded", code=0):
        self.emit("started", 0.0, worker="w1", runtime="podman", image="img",
                  limits={"memory": 8 << 30, "cpus": 4, "pids": 4096, "timeout": 1200, "warning": 900})
        self.emit("phase", 12.3, name="packages", line="Installing packages")
        self.emit("log", 13.0, stream="stdout", lines=["hello from the build", "WARNING: low disk"])
        self.emit("log", 13.5, stream="stderr", lines=["an error line"])
        self.emit("warning", 900.0, elapsed=900.0, timeout=1200.0, message="15 minutes")
        self.emit("finished", 950.0, result=result_map(self.id, status, code))


# --- submit ---------------------------------------------------------------

def test_submit_writes_the_contract_job(enqueue, ini, r, profile):
    before = time.time()
    cp = enqueue("submit", "--profile", profile, "--output", "out/job1", "--id", "job1",
                 "--memory", "4g", "--cpus", "2", "--timeout", "600", "--warning", "300",
                 "--epoch", "1700000000", "--retries", "2", "--meta", "user=7",
                 "--meta", "team=iso", "--meta", "user=8", check=0)
    assert cp.stdout == "job1\n"
    raw = r.lrange(nskey(ini.ns, "queue"), 0, -1)
    assert len(raw) == 1
    job = msgpack.unpackb(raw[0], raw=False)
    assert job["id"] == "job1"
    assert job["profile"] == "profiles/releng" and job["output"] == "out/job1"
    assert job["memory"] == 4 << 30 and isinstance(job["memory"], int)
    assert job["cpus"] == 2 and isinstance(job["cpus"], (int, float))
    assert job["timeout"] == 600 and job["warning"] == 300
    assert job["source_date_epoch"] == 1700000000 and isinstance(job["source_date_epoch"], int)
    assert job["retries"] == 2
    assert job["meta"] == {"user": "8", "team": "iso"}
    assert before - 1 <= job["enqueued_at"] <= time.time() + 1
    assert "image" not in job
    h = r.hgetall(nskey(ini.ns, "job", "job1"))
    assert h[b"state"] == b"queued"
    assert abs(float(h[b"enqueued_at"]) - job["enqueued_at"]) < 0.01


def test_submit_defaults_and_absolute_paths(enqueue, ini, r, builds_root, profile):
    cp = enqueue("submit", "--profile", str(builds_root / profile), "--output",
                 str(builds_root) + "//out/x", check=0)
    job_id = cp.stdout.strip()
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", job_id)
    (job,) = queued_jobs(r, ini.ns)
    assert job["id"] == job_id
    assert job["profile"] == "profiles/releng" and job["output"] == "out/x"
    # limits not given are left to the worker's defaults
    for field in ("memory", "cpus", "timeout", "warning", "meta", "retries"):
        assert field not in job
    assert isinstance(job["source_date_epoch"], int)
    assert abs(job["source_date_epoch"] - time.time()) < 5
    # two submits get two ids
    cp2 = enqueue("--json", "submit", "--profile", profile, "--output", "out/y", check=0)
    assert json.loads(cp2.stdout)["id"] != job_id
    assert len(queued_jobs(r, ini.ns)) == 2


def test_submit_image_from_allow_list(make_ini, enqueue, r, profile):
    ini = make_ini(sandbox={"image": "img:a", "images": ["img:b", "img:c"]})
    enqueue("submit", "--profile", profile, "--output", "o", "--image", "img:c", ini=ini, check=0)
    assert queued_jobs(r, ini.ns)[0]["image"] == "img:c"


def test_resubmit_needs_rerun_starts_clean_but_never_twice_at_once(enqueue, ini, r, profile):
    """A known id is refused; --rerun (shared/lua/submit.lua mode rerun) runs a
    finished one again: its result and old outcome go, its stream stays."""
    jk = nskey(ini.ns, "job", "again")
    r.hset(jk, mapping={"state": "failed", "worker": "w1", "attempt": 3, "exit_code": 1,
                        "error": "boom", "lost": 1, "phase": "iso"})
    r.expire(jk, 100)
    r.lpush(nskey(ini.ns, "result", "again"), msgpack.packb(result_map("again", "failed", 1)))
    r.xadd(nskey(ini.ns, "log", "again"), {"seq": 1, "type": "started", "event": b"\x80"})
    r.expire(nskey(ini.ns, "log", "again"), 100)
    r.hset(nskey(ini.ns, "cancel"), "again", time.time())
    cp = enqueue("submit", "--profile", profile, "--output", "o", "--id", "again", check=2)
    assert "job again is already failed" in cp.stderr and "--rerun" in cp.stderr
    assert r.hget(jk, "state") == b"failed" and r.llen(nskey(ini.ns, "queue")) == 0
    enqueue("submit", "--profile", profile, "--output", "o", "--id", "again", "--rerun", check=0)
    h = r.hgetall(jk)
    assert set(h) == {b"state", b"enqueued_at", b"digest", b"worker", b"attempt"} and h[b"state"] == b"queued"
    assert h[b"attempt"] == b"3"
    assert h[b"digest"].decode() == hashlib.sha1(r.lindex(nskey(ini.ns, "queue"), 0)).hexdigest()
    assert r.ttl(jk) == -1 and r.ttl(nskey(ini.ns, "log", "again")) == -1
    assert not r.exists(nskey(ini.ns, "result", "again"))
    assert r.xlen(nskey(ini.ns, "log", "again")) == 1
    assert not r.hexists(nskey(ini.ns, "cancel"), "again")
    cp = enqueue("submit", "--profile", profile, "--output", "o", "--id", "again", check=2)
    assert "already queued" in cp.stderr
    cp = enqueue("submit", "--profile", profile, "--output", "o", "--id", "again", "--rerun", check=2)
    assert "already queued" in cp.stderr
    assert r.llen(nskey(ini.ns, "queue")) == 1


@pytest.mark.parametrize("args, words", [
    (["--id", "a b;rm"], ["--id", "a b;rm"]),
    (["--id", "../x"], ["--id"]),
    (["--profile", "../x"], ["bad_path", "profile", ".."]),
    (["--output", "a/../../etc"], ["bad_path", "output"]),
    (["--profile", "/etc"], ["--profile", "/etc", "builds_root"]),
    (["--memory", "-5"], ["--memory", "-5"]),
    (["--memory", "1k"], ["bad_value", "memory"]),
    (["--memory", "99t"], ["over_limit", "memory"]),
    (["--cpus", "lots"], ["--cpus", "lots"]),
    (["--cpus", "999"], ["over_limit", "cpus"]),
    (["--timeout", "soon"], ["--timeout"]),
    (["--timeout", "100", "--warning", "200"], ["bad_value", "warning"]),
    (["--image", "evil:latest"], ["image_not_allowed", "evil:latest"]),
    (["--retries", "11"], ["over_limit", "retries"]),
    (["--epoch", "-1"], ["--epoch"]),
    (["--meta", "novalue"], ["--meta", "KEY=VALUE"]),
    (["--frob"], ["unknown option --frob"]),
    (["--wait-timeout", "x"], ["--wait-timeout"]),
    (["stray"], ["unexpected argument", "stray"]),
])
def test_submit_bad_input(enqueue, ini, r, profile, args, words):
    base = {"--profile": profile, "--output": "out/x"}
    argv = ["submit"]
    for opt, val in base.items():
        if opt not in args:
            argv += [opt, val]
    cp = enqueue(*argv, *args, check=2)
    assert cp.stderr.startswith("enqueue: "), cp.stderr
    for w in words:
        assert w in cp.stderr, (w, cp.stderr)
    assert cp.stdout == ""
    assert r.llen(nskey(ini.ns, "queue")) == 0


@pytest.mark.parametrize("args, words", [
    (["submit", "--output", "o"], ["--profile", "required"]),
    (["submit", "--profile", "p"], ["--output", "required"]),
    (["submit", "--profile"], ["--profile needs a value"]),
    (["frobnicate"], ["unknown command", "frobnicate"]),
    (["status"], ["job ID is required"]),
    (["status", "a b;rm"], ["not valid"]),
    (["logs", "../x"], ["not valid"]),
    (["cancel", "$(reboot)"], ["not valid"]),
    (["queue", "extra"], ["unexpected argument"]),
    (["dead", "--limit", "many"], ["--limit"]),
    (["retry-dead"], ["INDEX", "--all"]),
    (["retry-dead", "x"], ["INDEX"]),
    (["top", "--interval", "0"], ["--interval"]),
    (["--json=yes", "queue"], ["takes no value"]),
])
def test_usage_errors(enqueue, args, words):
    cp = enqueue(*args, check=2)
    assert cp.stderr.startswith("enqueue: ")
    for w in words:
        assert w in cp.stderr, (w, cp.stderr)


def test_no_command_and_help(enqueue):
    cp = enqueue(check=2)
    assert "usage:" in cp.stderr
    for cmd in ["", "submit", "status", "watch", "queue", "cancel", "dead", "retry-dead",
                "workers", "logs", "top", "help"]:
        argv = [cmd, "--help"] if cmd else ["--help"]
        cp = enqueue(*[a for a in argv if a], check=0)
        assert cp.stdout.startswith("usage: enqueue"), cmd
    assert "--profile" in enqueue("help", "submit", check=0).stdout
    assert "--limit" in enqueue("dead", "-h", check=0).stdout
    assert re.match(r"enqueue \d+\.\d+\.\d+", enqueue("--version", check=0).stdout)


def test_global_options_anywhere(enqueue, ini, r):
    r.lpush(nskey(ini.ns, "queue"), b"x")
    for argv in (["-c", ini, "--json", "queue"], ["queue", "--json", "-c", ini],
                 ["--json", "queue", "-c" + ini], ["queue", "--config=" + ini, "--json"]):
        cp = enqueue(*argv, ini=None, check=0)
        assert json.loads(cp.stdout)["queue"] == 1, argv
    cp = enqueue("help", "frobnicate", check=2)
    assert "unknown command" in cp.stderr
    cp = enqueue("queue", "--redis", "", check=2)
    assert "--redis" in cp.stderr and "empty" in cp.stderr


def test_config_errors(enqueue, tmp_path):
    cp = enqueue("queue", ini=str(tmp_path / "missing.ini"), check=2)
    assert "missing.ini" in cp.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text("[queue]\nnamespace = a b\n")
    cp = enqueue("queue", ini=str(bad), check=2)
    assert "namespace" in cp.stderr
    cp = enqueue("queue", "--redis", "http://x", check=2)
    assert "--redis" in cp.stderr and "unsupported" in cp.stderr


# --- status ---------------------------------------------------------------

def test_status_of_a_job_the_backend_queued(enqueue, ini, r):
    job = {"id": "build-42", "profile": "profiles/releng", "output": "out/build-42",
           "source_date_epoch": int(time.time()), "memory": "4g", "cpus": 2,
           "timeout": 1800, "meta": {"user": 7}}
    with r.pipeline() as p:
        p.hset(nskey(ini.ns, "job", "build-42"), mapping={"state": "queued", "enqueued_at": time.time()})
        p.lpush(nskey(ini.ns, "queue"), msgpack.packb(job))
        p.execute()
    r.lpush(nskey(ini.ns, "queue"), msgpack.packb({**job, "id": "build-43"}))
    st = json.loads(enqueue("status", "build-42", "--json", check=0).stdout)
    assert st["id"] == "build-42"
    assert st["job"]["state"] == "queued"
    assert st["payload"] == job
    assert st["queue_position"] == 0
    assert st["result"] is None
    out = enqueue("status", "build-42", check=0).stdout
    assert "queued" in out and "profiles/releng" in out and "1 of 2" in out


def test_status_with_result_and_unknown(enqueue, ini, r):
    r.hset(nskey(ini.ns, "job", "done1"), mapping={"state": "succeeded", "worker": "w1", "attempt": 1,
                                               "started_at": time.time() - 60,
                                               "finished_at": time.time(), "exit_code": 0})
    r.lpush(nskey(ini.ns, "result", "done1"), msgpack.packb(result_map("done1", "succeeded")))
    st = json.loads(enqueue("--json", "status", "done1", check=0).stdout)
    assert st["result"]["status"] == "succeeded"
    assert st["result"]["artifacts"][0]["sha256"] == "ab" * 32
    assert st["payload"] is None
    out = enqueue("status", "done1", check=0).stdout
    assert "succeeded" in out and "archlinux.iso" in out and "ab" * 32 in out
    cp = enqueue("status", "nosuchjob", check=1)
    assert "unknown" in cp.stderr


def test_status_of_a_running_job_finds_its_payload(enqueue, ini, r):
    payload = msgpack.packb({"id": "run1", "profile": "p", "output": "o", "timeout": 99})
    r.lpush(nskey(ini.ns, "active", "w9"), payload)
    r.hset(nskey(ini.ns, "job", "run1"), mapping={"state": "running", "worker": "w9", "attempt": 1,
                                              "started_at": time.time(), "phase": "iso"})
    st = json.loads(enqueue("status", "run1", "--json", check=0).stdout)
    assert st["payload"]["timeout"] == 99 and st["queue_position"] is None
    assert st["job"]["phase"] == "iso"


# --- queue, cancel --------------------------------------------------------

def test_queue_counts(enqueue, ini, r):
    for i in range(3):
        r.lpush(nskey(ini.ns, "queue"), msgpack.packb({"id": f"q{i}"}))
    r.lpush(nskey(ini.ns, "active", "w1"), b"a", b"b")
    r.lpush(nskey(ini.ns, "active", "w2"), b"c")
    r.zadd(nskey(ini.ns, "delayed"), {b"d": time.time() + 60})
    r.lpush(nskey(ini.ns, "dead"), b"x", b"y")
    q = json.loads(enqueue("queue", "--json", check=0).stdout)
    assert q == {"queue": 3, "active": {"w1": 2, "w2": 1}, "active_total": 3, "delayed": 1, "dead": 2}
    out = enqueue("queue", check=0).stdout
    assert re.search(r"queued\s+3", out) and re.search(r"dead\s+2", out)
    assert re.search(r"w1\s+2", out)


def test_queue_empty_namespace(enqueue):
    q = json.loads(enqueue("--json", "queue", check=0).stdout)
    assert q == {"queue": 0, "active": {}, "active_total": 0, "delayed": 0, "dead": 0}


def test_cancel(enqueue, ini, r, profile):
    enqueue("submit", "--profile", profile, "--output", "o", "--id", "c1", check=0)
    before = time.time()
    cp = enqueue("cancel", "c1", check=0)
    assert "c1" in cp.stdout
    assert before - 1 <= float(r.hget(nskey(ini.ns, "cancel"), "c1")) <= time.time() + 1
    out = json.loads(enqueue("cancel", "c1", "--json", check=0).stdout)
    assert out == {"id": "c1", "state": "queued", "cancel_requested": True}
    # unknown: recorded, with a warning
    cp = enqueue("cancel", "ghost", check=0)
    assert "warning" in cp.stderr and r.hexists(nskey(ini.ns, "cancel"), "ghost")
    # already final: nothing to cancel
    r.hset(nskey(ini.ns, "job", "old"), "state", "succeeded")
    cp = enqueue("cancel", "old", check=0)
    assert "already finished" in cp.stderr and not r.hexists(nskey(ini.ns, "cancel"), "old")


# --- dead letters ---------------------------------------------------------

def dead_entry(reason, error, payload, job_id=None, ts=None):
    entry = {"reason": reason, "error": error, "payload": payload, "worker": "w1",
             "ts": ts or time.time()}
    if job_id:
        entry["id"] = job_id
    return msgpack.packb(entry, use_bin_type=True)


def test_dead_and_retry_dead_round_trip(enqueue, ini, r):
    p1 = msgpack.packb({"id": "d1", "profile": "gone", "output": "o"})
    p2 = b"\xc1not msgpack"
    p3 = msgpack.packb({"id": "d3", "profile": "x", "output": "o", "cpus": "four"})
    r.lpush(nskey(ini.ns, "dead"), dead_entry("bad_path", "profile: \"gone\": No such file", p1, "d1"))
    r.lpush(nskey(ini.ns, "dead"), dead_entry("malformed", "payload: invalid msgpack byte 0xc1", p2))
    r.lpush(nskey(ini.ns, "dead"), dead_entry("wrong_type", "cpus: must be a number", p3, "d3"))
    r.hset(nskey(ini.ns, "job", "d1"), mapping={"state": "dead", "error": "profile gone", "lost": 2})

    d = json.loads(enqueue("dead", "--json", check=0).stdout)
    assert d["total"] == 3
    assert [e["reason"] for e in d["entries"]] == ["wrong_type", "malformed", "bad_path"]
    assert [e["id"] for e in d["entries"]] == ["d3", None, "d1"]
    assert [e["payload_size"] for e in d["entries"]] == [len(p3), len(p2), len(p1)]
    assert d["entries"][2]["index"] == 2 and "No such file" in d["entries"][2]["error"]
    out = enqueue("dead", check=0).stdout
    assert "bad_path" in out and "malformed" in out and "d1" in out
    assert "1 more" in enqueue("dead", "--limit", "2", check=0).stdout

    # by index: the original bytes go back, the job hash is reset
    cp = enqueue("retry-dead", "2", check=0)
    assert "d1" in cp.stdout
    assert r.lrange(nskey(ini.ns, "queue"), 0, -1) == [p1]
    h = r.hgetall(nskey(ini.ns, "job", "d1"))
    assert h[b"state"] == b"queued" and b"lost" not in h and b"No such file" in h[b"last_error"]
    assert r.llen(nskey(ini.ns, "dead")) == 2

    # by id, as JSON
    out = json.loads(enqueue("retry-dead", "--id", "d3", "--json", check=0).stdout)
    assert out == {"requeued": [{"index": 0, "id": "d3", "requeued": True}]}
    assert r.lindex(nskey(ini.ns, "queue"), 0) == p3
    cp = enqueue("retry-dead", "--id", "d3", check=1)
    assert "no dead letter" in cp.stderr

    # an index that is not there; then --all
    cp = enqueue("retry-dead", "7", check=1)
    assert "index 7" in cp.stderr
    enqueue("retry-dead", "--all", check=0)
    assert r.llen(nskey(ini.ns, "dead")) == 0
    assert r.lrange(nskey(ini.ns, "queue"), 0, -1) == [p2, p3, p1]
    assert "no dead letters" in enqueue("dead", check=0).stdout


def test_retry_dead_removes_the_entry_it_read(enqueue, ini, r):
    """An entry pushed meanwhile shifts indices; the one shown is still the one retried."""
    p1 = msgpack.packb({"id": "e1", "profile": "p", "output": "o"})
    e1 = dead_entry("bad_path", "x", p1, "e1")
    r.lpush(nskey(ini.ns, "dead"), e1, e1)       # the same job twice: queued once
    cp = enqueue("retry-dead", "0", "1", check=1)
    assert "queued or running" in cp.stderr
    assert r.llen(nskey(ini.ns, "dead")) == 1 and r.llen(nskey(ini.ns, "queue")) == 1
    r.delete(nskey(ini.ns, "dead"))
    r.lpush(nskey(ini.ns, "dead"), dead_entry("malformed", "bad byte", b"\xc1"))
    cp = enqueue("retry-dead", "0", "0", check=1)   # the second try finds it gone
    assert "removed meanwhile" in cp.stderr
    assert r.llen(nskey(ini.ns, "dead")) == 0 and r.lrange(nskey(ini.ns, "queue"), 0, 0) == [b"\xc1"]


def test_retry_dead_leaves_a_running_job_alone(enqueue, ini, r):
    """A duplicate id refused while the real job runs must not reset that job."""
    p1 = msgpack.packb({"id": "live", "profile": "p", "output": "o", "cpus": "x"})
    r.lpush(nskey(ini.ns, "dead"), dead_entry("wrong_type", "cpus", p1, "live"))
    r.hset(nskey(ini.ns, "job", "live"), mapping={"state": "running", "worker": "w1", "attempt": 1})
    cp = enqueue("retry-dead", "0", check=1)
    assert "running" in cp.stderr
    assert r.hget(nskey(ini.ns, "job", "live"), "worker") == b"w1"
    assert r.llen(nskey(ini.ns, "dead")) == 1 and r.llen(nskey(ini.ns, "queue")) == 0


# --- workers, logs, top ---------------------------------------------------

def test_workers(enqueue, ini, r):
    now = time.time()
    r.hset(nskey(ini.ns, "worker", "host1-100"), mapping={
        "id": "host1-100", "host": "host1", "pid": 100, "version": "1.0.0",
        "started_at": now - 3700, "beat": now - 1, "concurrency": 2, "running": 1,
        "jobs": "job-a"})
    r.zadd(nskey(ini.ns, "workers"), {"host1-100": now - 1, "host2-200": now - 60})
    r.hset(nskey(ini.ns, "job", "job-a"), mapping={"state": "running", "worker": "host1-100",
                                               "started_at": now - 125, "phase": "squashfs"})
    w = json.loads(enqueue("workers", "--json", check=0).stdout)["workers"]
    by = {x["id"]: x for x in w}
    live, lost = by["host1-100"], by["host2-200"]
    assert not live["lost"] and lost["lost"]
    assert live["host"] == "host1" and live["version"] == "1.0.0"
    assert live["concurrency"] == 2 and live["running"] == 1 and live["free"] == 1
    assert 3690 < live["uptime"] < 3800
    (job,) = live["jobs"]
    assert job["id"] == "job-a" and job["phase"] == "squashfs" and 120 < job["elapsed"] < 200
    out = enqueue("workers", check=0).stdout
    assert "host1-100" in out and "1/2" in out and "1h01m" in out
    assert "job-a" in out and "squashfs" in out and "2m0" in out
    assert re.search(r"host2-200.*lost", out)


def test_workers_none(enqueue):
    assert "no workers" in enqueue("workers", check=0).stdout
    assert json.loads(enqueue("workers", "--json", check=0).stdout) == {"workers": []}


def test_logs_replays_the_stream(enqueue, ini, r):
    Emitter(r, ini.ns, "lj").build("failed", 1)
    out = enqueue("logs", "lj", check=0).stdout
    lines = out.splitlines()
    assert lines[0].startswith("[   0.0s] started on w1")
    assert "[  12.3s] phase packages" in lines
    assert "hello from the build" in lines and "WARNING: low disk" in lines
    assert "! an error line" in lines
    assert any(l.startswith("[ 900.0s] WARNING: 15 minutes") for l in lines)
    assert any(l.startswith("[ 950.0s] finished: failed (exit 1)") for l in lines)
    assert "\033[" not in out          # not a terminal: no colours
    evs = [json.loads(l) for l in enqueue("logs", "lj", "--json", check=0).stdout.splitlines()]
    assert [e["seq"] for e in evs] == [1, 2, 3, 4, 5, 6]
    assert evs[-1]["result"]["status"] == "failed"
    cp = enqueue("logs", "nothing-here", check=1)
    assert "no events" in cp.stderr


def test_top_once(enqueue, ini, r):
    for i in range(4):
        r.lpush(nskey(ini.ns, "queue"), msgpack.packb({"id": f"t{i}"}))
    now = time.time()
    r.hset(nskey(ini.ns, "worker", "w1"), mapping={"id": "w1", "host": "h", "pid": 1, "version": "1.0.0",
                                               "started_at": now - 10, "beat": now, "concurrency": 1,
                                               "running": 1, "jobs": "run-a"})
    r.zadd(nskey(ini.ns, "workers"), {"w1": now})
    r.hset(nskey(ini.ns, "job", "run-a"), mapping={"state": "running", "started_at": now - 30,
                                               "phase": "packages"})
    r.lpush(nskey(ini.ns, "active", "w1"), msgpack.packb({"id": "run-a", "profile": "p", "output": "o",
                                                      "timeout": 120}))
    r.lpush(nskey(ini.ns, "results"), msgpack.packb(result_map("bad-1", "oom_killed", 137)),
            msgpack.packb(result_map("ok-1", "succeeded")))
    out = enqueue("top", "--once", check=0).stdout
    assert re.search(r"queue 4\b", out)
    assert "run-a" in out and "packages" in out and "/2m00s" in out and "25%" in out
    assert "bad-1" in out and "oom_killed" in out and "ok-1" not in out
    t = json.loads(enqueue("top", "--once", "--json", check=0).stdout)
    assert t["queue"] == 4 and t["running"] == 1 and t["workers"] == 1
    assert [f["id"] for f in t["failures"]] == ["bad-1"]


def test_top_repeats_until_interrupted(enqueue_bg, ini, r):
    p = enqueue_bg("top", "--interval", "0.2")
    time.sleep(1.0 * SLOW)
    os.kill(p.pid, signal.SIGINT)
    out, err = finish(p, 10)
    assert p.returncode == 0, err
    assert out.count("enqueue top") >= 2 and "\033[" not in out


# --- wait, follow, watch --------------------------------------------------

def wait_queued(r, ns, job_id):
    poll(lambda: r.hget(nskey(ns, "job", job_id), "state") == b"queued")


@pytest.mark.parametrize("status, code", [
    ("succeeded", 0), ("failed", 1), ("timed_out", 3), ("oom_killed", 4), ("cancelled", 5),
    ("error", 6),
])
def test_wait_exit_code_follows_the_status(enqueue_bg, ini, r, profile, status, code):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "w-" + status, "--wait")
    wait_queued(r, ini.ns, "w-" + status)
    time.sleep(0.2)
    r.lpush(nskey(ini.ns, "result", "w-" + status), msgpack.packb(result_map("w-" + status, status, code)))
    out, err = finish(p, 20)
    assert p.returncode == code, err
    assert out.splitlines()[0] == "w-" + status
    assert status in out and "archlinux.iso" in out
    # the result stays for `enqueue status`
    assert r.llen(nskey(ini.ns, "result", "w-" + status)) == 1


def test_wait_json_prints_the_result(enqueue_bg, ini, r, profile):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "wj", "--wait", "--json")
    wait_queued(r, ini.ns, "wj")
    r.lpush(nskey(ini.ns, "result", "wj"), msgpack.packb(result_map("wj", "oom_killed", 137)))
    out, err = finish(p, 20)
    assert p.returncode == 4, err
    res = json.loads(out)
    assert res["status"] == "oom_killed" and res["exit_code"] == 137 and res["meta"] == {"user": 7}


def test_wait_is_interrupted_by_ctrl_c(enqueue_bg, ini, r, profile):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "wi", "--wait")
    wait_queued(r, ini.ns, "wi")
    time.sleep(0.3)
    t0 = time.time()
    os.kill(p.pid, signal.SIGINT)
    out, err = finish(p, 10)
    assert p.returncode == 130, err
    assert "interrupted" in err and time.time() - t0 < 3 * SLOW
    assert r.hget(nskey(ini.ns, "job", "wi"), "state") == b"queued"


def test_wait_dead_and_timeout(enqueue_bg, enqueue, ini, r, profile):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "wd", "--wait")
    wait_queued(r, ini.ns, "wd")
    r.hset(nskey(ini.ns, "job", "wd"), mapping={"state": "dead", "error": "lost 3 times"})
    out, err = finish(p, 20)
    assert p.returncode == 7, err
    assert "dead" in out and "lost 3 times" in out
    cp = enqueue("submit", "--profile", profile, "--output", "o", "--wait", "--wait-timeout", "1.5",
                 check=8)
    assert "gave up waiting" in cp.stderr


def test_follow_replays_then_streams(enqueue_bg, ini, r, profile):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "fj", "--follow")
    wait_queued(r, ini.ns, "fj")
    em = Emitter(r, ini.ns, "fj")
    em.emit("started", 0.0, worker="w1", runtime="exec", image="img",
            limits={"memory": 1 << 30, "cpus": 1, "pids": 10, "timeout": 60, "warning": 45})
    em.emit("phase", 1.5, name="packages", line="Installing packages")
    time.sleep(0.5 * SLOW)      # some events arrive live
    em.emit("log", 2.0, stream="stdout", lines=["line one"])
    em.emit("stats", 5.0, elapsed=5.0, memory=1 << 20, cpu=1.0)
    r.lpush(nskey(ini.ns, "result", "fj"), msgpack.packb(result_map("fj", "timed_out", -1)))
    em.emit("finished", 60.0, result=result_map("fj", "timed_out", -1))
    out, err = finish(p, 20)
    assert p.returncode == 3, err
    lines = out.splitlines()
    assert lines[0] == "fj"
    assert sum(l.startswith("[   0.0s] started on w1") for l in lines) == 1
    assert lines.count("[   1.5s] phase packages") == 1
    assert lines.count("line one") == 1
    assert any(l.startswith("[   5.0s] stats: memory 1.0 MiB") for l in lines)
    assert any(l.startswith("[  60.0s] finished: timed_out") for l in lines)
    assert "archlinux.iso" in out       # the full result after the last event


def test_follow_json_and_a_job_that_dies(enqueue_bg, ini, r, profile):
    p = enqueue_bg("submit", "--profile", profile, "--output", "o", "--id", "fd", "--follow", "--json")
    wait_queued(r, ini.ns, "fd")
    Emitter(r, ini.ns, "fd").emit("dead", 0.0, reason="worker_lost", error="lost 3 times")
    out, err = finish(p, 20)
    assert p.returncode == 7, err
    evs = [json.loads(l) for l in out.splitlines()]
    assert evs[-1]["type"] == "dead" and evs[-1]["reason"] == "worker_lost"


def test_watch_one_job(enqueue_bg, ini, r):
    r.hset(nskey(ini.ns, "job", "wa"), "state", "running")
    p = enqueue_bg("watch", "wa")
    time.sleep(0.5 * SLOW)
    Emitter(r, ini.ns, "wa").build("succeeded", 0)
    out, err = finish(p, 20)
    assert p.returncode == 0, err
    assert "[  12.3s] phase packages" in out.splitlines()
    assert "finished: succeeded" in out


def test_watch_a_finished_job_ends(enqueue, ini, r):
    r.hset(nskey(ini.ns, "job", "wf"), mapping={"state": "failed", "error": "exit 1"})
    cp = enqueue("watch", "wf", check=1)
    assert "failed" in cp.stdout


def test_watch_all_jobs(enqueue_bg, ini, r):
    p = enqueue_bg("--json", "watch")
    time.sleep(0.5 * SLOW)
    for job_id in ("a1", "a2"):
        em = Emitter(r, ini.ns, job_id)
        em.emit("phase", 1.0, name="iso")
        em.emit("log", 1.5, stream="stdout", lines=["not on the events channel"])
    poll(lambda: r.pubsub_numsub(nskey(ini.ns, "events"))[0][1] >= 1)
    time.sleep(0.5 * SLOW)
    os.kill(p.pid, signal.SIGINT)
    out, err = finish(p, 10)
    assert p.returncode == 0, err
    evs = [json.loads(l) for l in out.splitlines()]
    assert [(e["id"], e["type"]) for e in evs] == [("a1", "phase"), ("a2", "phase")]


# --- connecting -----------------------------------------------------------

def test_redis_url_unix_socket_and_precedence(make_ini, enqueue, redis_server, r):
    ini = make_ini(redis={"url": f"redis://127.0.0.1:{free_port()}/0"})
    r.lpush(nskey(ini.ns, "queue"), b"x")
    q = json.loads(enqueue("--redis", redis_server.unix_url, "queue", "--json", ini=ini, check=0).stdout)
    assert q["queue"] == 1
    # REDIS_URL overrides worker.ini; --redis overrides REDIS_URL
    env = {"REDIS_URL": redis_server.unix_url}
    assert json.loads(enqueue("queue", "--json", ini=ini, env=env, check=0).stdout)["queue"] == 1
    cp = enqueue("queue", "--redis", f"redis://127.0.0.1:{free_port()}/0", ini=ini, env=env, check=8)
    assert "cannot use Redis" in cp.stderr
    # a database number selects it
    r2 = redis_server.client(db=3)
    r2.lpush(nskey(ini.ns, "queue"), b"a", b"b")
    q = json.loads(enqueue("queue", "--json", "--redis", redis_server.unix_url + "?db=3",
                           ini=ini, check=0).stdout)
    assert q["queue"] == 2


def test_unreachable_redis(make_ini, enqueue):
    port = free_port()
    ini = make_ini(redis={"url": f"redis://127.0.0.1:{port}/0", "connect_timeout": 2})
    cp = enqueue("queue", ini=ini, check=8)
    assert cp.stderr.startswith("enqueue: cannot use Redis at redis://127.0.0.1:%d" % port)
    assert "refused" in cp.stderr.lower()
    cp = enqueue("status", "x", "--redis", "unix:///nonexistent/redis.sock", ini=ini, check=8)
    assert "/nonexistent/redis.sock" in cp.stderr


def test_passwords(redis_factory, make_ini, enqueue, builds_root):
    srv = redis_factory(password="s3cret")
    ini = make_ini(redis={"url": srv.url})
    cp = enqueue("queue", ini=ini, check=8)
    assert "NOAUTH" in cp.stderr and "password" in cp.stderr
    cp = enqueue("queue", ini=ini, env={"DEBATE_REDIS_PASSWORD": "pw-not-this"}, check=8)
    assert cp.stderr.startswith("enqueue: cannot use Redis at ")
    assert "authentication failed" in cp.stderr and "pw-not-this" not in cp.stderr
    enqueue("queue", ini=ini, env={"DEBATE_REDIS_PASSWORD": "s3cret"}, check=0)
    # worker.ini's password wins over the environment; a URL's over both
    ini2 = make_ini(redis={"url": srv.url, "password": "s3cret"})
    enqueue("queue", ini=ini2, env={"DEBATE_REDIS_PASSWORD": "pw-not-this"}, check=0)
    ini3 = make_ini(redis={"url": srv.url, "password_env": "MY_PW"})
    enqueue("queue", ini=ini3, env={"MY_PW": "s3cret"}, check=0)
    cp = enqueue("queue", "--redis", f"redis://:bad@127.0.0.1:{srv.port}/0", ini=ini2, check=8)
    assert "bad@" not in cp.stderr and "***@" in cp.stderr


def test_sentinel(redis_server, redis_factory, make_ini, enqueue, tmp_path):
    """sentinel:// asks a real redis-sentinel for the master."""
    sentinel_bin = "/usr/bin/redis-sentinel"
    if not os.path.exists(sentinel_bin):
        pytest.skip("redis-sentinel is not installed")
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen([sentinel_bin, str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ini = make_ini(redis={"url": f"sentinel://127.0.0.1:{free_port()},127.0.0.1:{port}/mymaster"})
        redis_server.client().lpush(nskey(ini.ns, "queue"), b"x")
        deadline = time.time() + 10 * SLOW
        while True:
            cp = enqueue("queue", "--json", ini=ini)
            if cp.returncode == 0 or time.time() > deadline:
                break
            time.sleep(0.2)
        assert cp.returncode == 0, cp.stderr
        assert json.loads(cp.stdout)["queue"] == 1
        ini2 = make_ini(redis={"url": f"sentinel://127.0.0.1:{port}/nosuchmaster"})
        cp = enqueue("queue", ini=ini2, check=8)
        assert "nosuchmaster" in cp.stderr
    finally:
        proc.terminate()
        proc.wait(10)
