"""The worker end to end in exec mode (no container engine): the protocol
as the backend and dashboards see it, against a real redis-server."""
import signal
import subprocess
import time
from pathlib import Path

import msgpack

from tests.harness import (WORKER_BIN, Fleet, dead, make_profile, nskey, push_raw, results, stream_events,
                           submit, wait_result, write_ini, write_script)


def test_job_runs_and_result_is_recorded_once(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p1")
    cmd = write_script(tmp_path, 'echo "[mkarchiso] INFO: Validating options..."\n'
                                 'echo "epoch=$SOURCE_DATE_EPOCH tz=$TZ lc=$LC_ALL"\necho oops >&2\n'
                                 'echo iso > "$DEBATE_OUTPUT/a.iso"\n')
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    jid = submit(r, ns, profile="p1", output="out/1", meta={"user": 7, "tags": ["a"]})
    res = wait_result(r, ns, jid, 20)
    assert res["status"] == "succeeded" and res["exit_code"] == 0
    assert res["id"] == jid and res["attempt"] == 1 and res["worker"] == w.wait_log(r"worker (\S+) ").group(1)
    assert res["meta"] == {"user": 7, "tags": ["a"]}
    assert res["artifacts"] == [{"name": "a.iso", "size": 4,
                                 "sha256": "53f73f17e88f82c4c360b1e28b99fcb3a6a126426079932ad91870251a8540d6"}]
    assert "epoch=1700000000 tz=UTC lc=C" in res["log_tail"] and "oops" in res["log_tail"]
    h = r.hgetall(nskey(ns, "job", jid))
    assert h[b"state"] == b"succeeded" and h[b"attempt"] == b"1" and h[b"exit_code"] == b"0"
    assert r.llen(nskey(ns, "results")) == 1
    assert r.llen(nskey(ns, "active", res['worker'])) == 0
    evs = stream_events(r, ns, jid)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    types = [e["type"] for e in evs]
    assert types[0] == "started" and types[-1] == "finished" and "phase" in types and "log" in types
    assert evs[-1]["result"] == res


def test_failed_build_has_exit_code_and_tail(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, 'echo step one\necho "[mkarchiso] ERROR: boom" >&2\nexit 3\n')
    fleet.start(sandbox={"runtime": "exec", "command": cmd})
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o"), 20)
    assert res["status"] == "failed" and res["exit_code"] == 3
    assert "exited with code 3" in res["error"]
    assert res["log_tail"][-1] == "[mkarchiso] ERROR: boom" or "[mkarchiso] ERROR: boom" in res["log_tail"]


def test_timeout_and_warning(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, "trap '' TERM\necho start\nwhile :; do sleep 0.1; done\n")
    fleet.start(sandbox={"runtime": "exec", "command": cmd, "stop_grace": 1})
    t0 = time.time()
    jid = submit(r, ns, profile="p", output="o", warning=1, timeout=2)
    res = wait_result(r, ns, jid, 20)
    took = time.time() - t0
    assert res["status"] == "timed_out" and "timeout" in res["error"]
    assert took >= 2.0
    evs = stream_events(r, ns, jid)
    warn = [e for e in evs if e["type"] == "warning"]
    assert len(warn) == 1 and 0.9 <= warn[0]["elapsed"] < 2 and warn[0]["timeout"] == 2


def test_concurrency_each_result_once(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, "sleep 0.2\necho done\n")
    fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 2})
    ids = [submit(r, ns, profile="p", output=f"o/{i}") for i in range(10)]
    got = [wait_result(r, ns, i, 30) for i in ids]
    assert all(g["status"] == "succeeded" for g in got)
    allres = results(r, ns)
    assert sorted(x["id"] for x in allres) == sorted(ids)


def test_refused_payloads_go_dead_and_worker_goes_on(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    w = fleet.start()
    push_raw(r, ns, b"\xc1not msgpack")
    push_raw(r, ns, msgpack.packb({"id": "x1", "profile": "../etc", "output": "o"}))
    jid = submit(r, ns, profile="p", output="o")
    assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
    d = dead(r, ns)
    assert {x["reason"] for x in d} == {"malformed", "bad_path"}
    assert any(x.get("id") == "x1" and x["payload"] == msgpack.packb({"id": "x1", "profile": "../etc", "output": "o"})
               for x in d)
    assert r.hget(nskey(ns, "job", "x1"), "state") == b"dead"
    assert w.alive()


def test_sigterm_drains_and_exits_zero(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    cmd = write_script(tmp_path, "sleep 1\necho ok\n")
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd})
    jid = submit(r, ns, profile="p", output="o")
    w.wait_log(r"job \S+: started")
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    assert wait_result(r, ns, jid, 5)["status"] == "succeeded"
    wid = w.wait_log(r"worker (\S+) ").group(1)
    assert r.exists(nskey(ns, "worker", wid)) == 0


def test_worker_over_unix_socket(tmp_path, redis_srv, r, ns, broot):
    """unix:// URLs: no TCP-only socket options on a unix socket."""
    make_profile(broot, "p")
    f = Fleet(tmp_path, f"unix://{redis_srv.sock}", ns, broot)
    try:
        w = f.start()
        jid = submit(r, ns, profile="p", output="o")
        assert wait_result(r, ns, jid, 20)["status"] == "succeeded"
        assert "retrying" not in w.log()
    finally:
        f.close()


def test_check_flag_and_bad_config(tmp_path, broot):
    """worker -n checks the file; a bad line is named as FILE:LINE: message."""
    good = write_ini(tmp_path / "good.ini", {"worker": {"builds_root": str(broot)},
                                              "sandbox": {"runtime": "exec", "command": "/bin/true"}})
    p = subprocess.run([WORKER_BIN, "-n", "-c", good], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr
    bad = tmp_path / "bad.ini"
    bad.write_text("[worker]\nbuilds_root = /x\nconcurrency = lots\n")
    p = subprocess.run([WORKER_BIN, "-n", "-c", str(bad)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and f"{bad}:3: concurrency:" in p.stderr, p.stderr
    p = subprocess.run([WORKER_BIN, "--no-such-flag"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "usage" in p.stderr
    p = subprocess.run([WORKER_BIN, "-c", good, "--concurrency", "0"], capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1 and "--concurrency" in p.stderr
    p = subprocess.run([WORKER_BIN, "-c", good, "--id", "a b"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "--id" in p.stderr


def test_sighup_reloads_limits_and_keeps_a_bad_file_out(fleet, r, ns, broot, tmp_path):
    make_profile(broot, "p")
    sections = {"sandbox": {"runtime": "exec", "command": "/bin/true", "memory": "32m", "max_memory": "64m"}}
    ini = fleet.ini(**sections)
    w = fleet.start(ini=ini)
    big = submit(r, ns, profile="p", output="o", memory="128m")
    w.wait_log(rf"refused a job {big}: over_limit")
    # A broken file is refused and the running configuration stays.
    good_text = Path(ini).read_text()
    Path(ini).write_text(good_text + "\n[sandbox]\nmax_memory = huge\n")
    w.signal(signal.SIGHUP)
    w.wait_log(r"SIGHUP: .*max_memory.*keeping the running configuration")
    still = submit(r, ns, profile="p", output="o", memory="128m")
    w.wait_log(rf"refused a job {still}: over_limit")
    # A good file raises the cap: the same job now runs.
    Path(ini).write_text(good_text.replace("max_memory = 64m", "max_memory = 256m"))
    w.signal(signal.SIGHUP)
    w.wait_log(r"SIGHUP: configuration reloaded")
    ok = submit(r, ns, profile="p", output="o", memory="128m")
    assert wait_result(r, ns, ok, 20)["status"] == "succeeded"
    assert w.alive()
