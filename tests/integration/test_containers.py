"""The worker with real containers (podman, and a private dockerd): the
sandbox, its limits and hardening, timeouts, OOM, floods, concurrency and
progress.

Every test runs real containers of the test image (tests/image/mkarchiso as
mkarchiso); nothing is mocked.  Tests taking `runtime` run once per engine.
"""
import hashlib
import json
import subprocess
import threading
import time
from pathlib import Path

import msgpack
import pytest

from tests.harness import SLOW, TEST_IMAGE, make_profile, nskey, results, stream_events, submit, wait_result


# mkarchiso's stages, as the default [phases] name them, in build order.
PHASES = ["validate", "packages", "customize", "bootloader", "squashfs", "iso", "done"]
EPOCH = 1700000000
ISO_NAME = "debatetest-2023.11.14-x86_64.iso"   # iso_name + date of EPOCH (UTC)


# ---------------------------------------------------------------- helpers

def rt_run(runtime, *args, timeout=60, check=True):
    p = subprocess.run([*runtime.cmd, *args], capture_output=True, text=True, env=runtime.env, timeout=timeout)
    if check:
        assert p.returncode == 0, f"{runtime.name} {' '.join(args)}: {p.stderr}"
    return p


def inspect(runtime, name):
    """`<runtime> inspect` of one container, decoded."""
    return json.loads(rt_run(runtime, "inspect", "--type", "container", name).stdout)[0]


def running(runtime, label):
    """Names of running containers carrying label."""
    p = rt_run(runtime, "ps", "--filter", f"label={label}", "--filter", "status=running",
               "--format", "{{.Names}}")
    return [x for x in p.stdout.split() if x]


def wait_running(runtime, job_id, timeout=30):
    """Wait until the job's container runs; return its inspect data."""
    deadline = time.time() + timeout * SLOW
    while time.time() < deadline:
        names = running(runtime, f"debate.job={job_id}")
        if names:
            d = inspect(runtime, names[0])
            if d["State"]["Running"] and d["State"]["Pid"] > 0:
                return d
        time.sleep(0.2)
    raise AssertionError(f"no running container for job {job_id} after {timeout}s")


def wait_gone(runtime, job_id, timeout=10):
    """Poll until no container (running or not) carries the job's label."""
    deadline = time.time() + timeout * SLOW
    left = runtime.containers(f"debate.job={job_id}")
    while left and time.time() < deadline:
        time.sleep(0.2)
        left = runtime.containers(f"debate.job={job_id}")
    assert left == [], f"containers of {job_id} left behind: {left}"


def cancel(r, ns, job_id):
    r.hset(nskey(ns, "cancel"), job_id, str(time.time()))


def cgroup_limits(pid):
    """The CPU and memory limits of the cgroup holding pid, read from the host.

    Works on cgroup v1 (cpu.cfs_quota_us / cpu.cfs_period_us,
    memory.limit_in_bytes, memory.memsw.limit_in_bytes) and v2 (cpu.max,
    memory.max, memory.swap.max); a hybrid tree counts as v1 when the
    memory controller is mounted there.  Returns a dict with the version,
    cpus (quota/period), memory and swap_ok (memory-swap == memory).
    """
    v1_mounts, v2_mount = {}, None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        f = line.split()
        sep = f.index("-")
        fstype, root, mnt, sopts = f[sep + 1], f[3], f[4], f[sep + 3]
        if fstype == "cgroup":
            for o in sopts.split(","):
                v1_mounts.setdefault(o, (root, mnt))
        elif fstype == "cgroup2" and v2_mount is None:
            v2_mount = (root, mnt)
    v1_paths, v2_path = {}, None
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        if ctrls == "":
            v2_path = path
        for c in ctrls.split(","):
            if c:
                v1_paths[c] = path

    def join(mount, path):
        root, mnt = mount
        if root != "/" and path.startswith(root):
            path = path[len(root):]
        return Path(mnt + path)

    if "memory" in v1_mounts and "memory" in v1_paths:
        cpu = join(v1_mounts["cpu"], v1_paths["cpu"])
        mem = join(v1_mounts["memory"], v1_paths["memory"])
        quota = int((cpu / "cpu.cfs_quota_us").read_text())
        period = int((cpu / "cpu.cfs_period_us").read_text())
        limit = int((mem / "memory.limit_in_bytes").read_text())
        memsw = int((mem / "memory.memsw.limit_in_bytes").read_text())
        return {"version": 1, "dir": str(mem), "cpus": quota / period if quota > 0 else None,
                "memory": limit, "swap_ok": memsw == limit, "memsw": memsw}
    assert v2_mount is not None and v2_path is not None, "no cgroup v1 memory controller and no cgroup v2"
    d = join(v2_mount, v2_path)
    quota, period = (d / "cpu.max").read_text().split()
    swap = (d / "memory.swap.max").read_text().strip()
    return {"version": 2, "dir": str(d), "cpus": None if quota == "max" else int(quota) / int(period),
            "memory": int((d / "memory.max").read_text()), "swap_ok": swap == "0", "swap_max": swap}


def expected_iso(profile_dir, iso_name, epoch):
    """The bytes the stand-in mkarchiso writes for a profile and epoch (see tests/image/mkarchiso)."""
    body = bytearray(32768)
    body += b"\x01CD001\x01" + b"DEBATE-TEST-ISO 1\n"
    body += f"iso_name={iso_name}\nSOURCE_DATE_EPOCH={epoch}\n".encode()
    root = Path(profile_dir)
    for p in sorted(("./" + str(x.relative_to(root)) for x in root.rglob("*")), key=lambda s: s.encode()):
        q = root / p[2:]
        if q.is_symlink():
            body += f"L {p} -> {q.readlink()}\n".encode()
        elif q.is_dir():
            body += f"D {p}\n".encode()
        else:
            data = q.read_bytes()
            body += f"F {p} {len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()
    total = max((len(body) + 2047) // 2048 * 2048, 393216)
    return bytes(body) + bytes(total - len(body))


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def artifacts_on_disk(outdir):
    out = Path(outdir)
    return sorted(({"name": str(p.relative_to(out)), "size": p.stat().st_size, "sha256": sha256_file(p)}
                   for p in out.rglob("*") if p.is_file()), key=lambda a: a["name"])


class Subscriber:
    """A plain redis-py SUBSCRIBE client reading in a thread until told to stop."""

    def __init__(self, r, *channels):
        self.ps = r.pubsub()
        self.ps.subscribe(*channels)
        # Wait for every subscription to be confirmed before anything is pushed.
        confirmed = set()
        deadline = time.time() + 10
        while len(confirmed) < len(channels) and time.time() < deadline:
            m = self.ps.get_message(timeout=0.5)
            if m and m["type"] == "subscribe":
                confirmed.add(m["channel"].decode())
        assert confirmed == set(channels), f"SUBSCRIBE not confirmed: {confirmed}"
        self.msgs = {c: [] for c in channels}
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self._stop.is_set():
            m = self.ps.get_message(timeout=0.2)
            if m and m["type"] == "message":
                ch = m["channel"].decode()
                self.msgs[ch].append(msgpack.unpackb(m["data"]))

    def wait_for(self, channel, pred, timeout=60):
        deadline = time.time() + timeout * SLOW
        while time.time() < deadline:
            if any(pred(e) for e in list(self.msgs[channel])):
                return
            time.sleep(0.05)
        raise AssertionError(f"nothing matching on {channel} within {timeout}s: "
                             f"{[e.get('type') for e in self.msgs[channel]][-20:]}")

    def close(self):
        self._stop.set()
        self.t.join(5)
        self.ps.close()


@pytest.fixture
def subscriber():
    subs = []

    def make(r, *channels):
        s = Subscriber(r, *channels)
        subs.append(s)
        return s
    yield make
    for s in subs:
        s.close()


# ---------------------------------------------------------------- 1. end to end

@pytest.mark.containers
def test_end_to_end_reproducible_iso(fleet, r, ns, broot, runtime):
    make_profile(broot, "p", mode="ok", seconds=0.5)
    w = fleet.start(runtime, worker={"log_batch_lines": 16})
    want = expected_iso(broot / "p", "debatetest", EPOCH)
    want_sha = hashlib.sha256(want).hexdigest()

    got = {}
    for out, epoch in (("out/a", EPOCH), ("out/b", EPOCH), ("out/c", EPOCH + 86400 * 40)):
        jid = submit(r, ns, profile="p", output=out, source_date_epoch=epoch, memory="256m", cpus=1)
        got[out] = (jid, wait_result(r, ns, jid, 60))
    wid = w.wait_log(r"worker (\S+) ").group(1)

    for out, (jid, res) in got.items():
        assert res["status"] == "succeeded" and res["exit_code"] == 0 and res["error"] == "", res
        assert res["id"] == jid and res["worker"] == wid and res["attempt"] == 1
        # The artifacts list is exactly the files in the output directory.
        assert sorted(res["artifacts"], key=lambda a: a["name"]) == artifacts_on_disk(broot / out)
        assert r.hget(nskey(ns, "job", jid), "state") == b"succeeded"
        assert r.hget(nskey(ns, "job", jid), "exit_code") == b"0"
        # A normal success leaves no container behind either.
        assert runtime.containers(f"debate.job={jid}") == []

    (ja, ra), (_, rb), (_, rc) = got["out/a"], got["out/b"], got["out/c"]
    # Same profile and SOURCE_DATE_EPOCH: the same bytes, twice, and the bytes we expect.
    assert ra["artifacts"] == rb["artifacts"] == [{"name": ISO_NAME, "size": len(want), "sha256": want_sha}]
    assert (broot / "out/a" / ISO_NAME).read_bytes() == want
    # Another epoch: another ISO (name carries the date, bytes differ).
    assert len(rc["artifacts"]) == 1
    assert rc["artifacts"][0]["sha256"] != want_sha
    assert rc["artifacts"][0]["sha256"] == hashlib.sha256(
        expected_iso(broot / "p", "debatetest", EPOCH + 86400 * 40)).hexdigest()

    evs = stream_events(r, ns, ja)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    types = [e["type"] for e in evs]
    assert types[0] == "started" and types[-1] == "finished", types
    st = evs[0]
    assert st["runtime"] == runtime.name and st["worker"] == wid and st["image"] == TEST_IMAGE
    assert st["limits"]["memory"] == 256 * 1024 * 1024 and st["limits"]["cpus"] == 1
    assert st["limits"]["timeout"] == 1200 and "pids" in st["limits"] and "warning" in st["limits"]
    assert "clamped" not in st
    # Phases: each of mkarchiso's stages once, in build order, done last.
    assert [e["name"] for e in evs if e["type"] == "phase"] == PHASES
    assert r.hget(nskey(ns, "job", ja), "phase") == b"done"
    logs = [e for e in evs if e["type"] == "log"]
    assert len(logs) > 1 and all(1 <= len(e["lines"]) <= 16 for e in logs)
    lines = [x for e in logs if e["stream"] == "stdout" for x in e["lines"]]
    assert lines[0] == "[mkarchiso] INFO: Validating options..."
    assert lines[-1] == f"[mkarchiso] INFO: Done! | /build/output/{ISO_NAME}"
    assert evs[-1]["result"] == ra


# ---------------------------------------------------------------- 2. OOM

@pytest.mark.containers
def test_memory_limit_oom_killed(fleet, r, ns, broot, runtime):
    make_profile(broot, "hog", mode="hog", hog_mb=512)
    fleet.start(runtime)
    jid = submit(r, ns, profile="hog", output="o", memory="64m")
    res = wait_result(r, ns, jid, 60)
    # mkarchiso exits 1 after its step is killed: the kill must come from the cgroup.
    assert res["status"] == "oom_killed", res
    assert res["exit_code"] == 1, res
    assert "memory" in res["error"], res["error"]
    assert any("a build step was killed" in x for x in res["log_tail"]), res["log_tail"]
    assert r.hget(nskey(ns, "job", jid), "state") == b"oom_killed"
    assert runtime.containers(f"debate.job={jid}") == []


# ---------------------------------------------------------------- 3. cgroup limits, cancel

@pytest.mark.containers
def test_cpu_and_memory_limits_in_cgroup_then_cancel(fleet, r, ns, broot, runtime):
    make_profile(broot, "hang", mode="hang")
    fleet.start(runtime)
    mem = 96 * 1024 * 1024
    jid = submit(r, ns, profile="hang", output="o", cpus=0.5, memory="96m", timeout=120)
    d = wait_running(runtime, jid)
    cg = cgroup_limits(d["State"]["Pid"])
    assert cg["cpus"] == pytest.approx(0.5), cg
    assert cg["memory"] == mem, cg
    assert cg["swap_ok"], f"memory-swap is not equal to memory: {cg}"

    t0 = time.time()
    cancel(r, ns, jid)
    res = wait_result(r, ns, jid, 10)
    assert res["status"] == "cancelled", res
    assert time.time() - t0 <= 10 * SLOW
    assert r.hget(nskey(ns, "job", jid), "state") == b"cancelled"
    assert r.hexists(nskey(ns, "cancel"), jid) == 0
    wait_gone(runtime, jid, 10)


# ---------------------------------------------------------------- 4. warning and timeout

@pytest.mark.containers
def test_warning_then_timeout_kills_and_removes(fleet, r, ns, broot, runtime):
    make_profile(broot, "hang", mode="hang")
    fleet.start(runtime)
    t0 = time.time()
    jid = submit(r, ns, profile="hang", output="o", warning=2, timeout=4)
    res = wait_result(r, ns, jid, 40)
    took = time.time() - t0
    assert res["status"] == "timed_out", res
    assert "timeout" in res["error"], res["error"]
    assert took >= 4 and res["duration"] >= 4, (took, res["duration"])
    assert res["exit_code"] != 0
    evs = stream_events(r, ns, jid)
    warn = [e for e in evs if e["type"] == "warning"]
    assert len(warn) == 1, warn
    assert abs(warn[0]["elapsed"] - 2) <= 1 and warn[0]["timeout"] == 4 and warn[0]["message"], warn
    assert evs[-1]["type"] == "finished" and evs[-1]["result"]["status"] == "timed_out"
    assert r.hget(nskey(ns, "job", jid), "state") == b"timed_out"
    wait_gone(runtime, jid, 10)


# ---------------------------------------------------------------- 5. failure

@pytest.mark.containers
def test_failing_build_has_exit_code_and_tail(fleet, r, ns, broot, runtime):
    make_profile(broot, "f", mode="fail", exit=7, seconds=0)
    fleet.start(runtime)
    jid = submit(r, ns, profile="f", output="o")
    res = wait_result(r, ns, jid, 60)
    assert res["status"] == "failed" and res["exit_code"] == 7, res
    assert "7" in res["error"], res["error"]
    err_line = ("[mkarchiso] ERROR: Failed to install packages to '/tmp/archiso-work/x86_64/airootfs/' "
                "(test image: mode=fail).")
    assert err_line in res["log_tail"], res["log_tail"]
    assert "error: failed to commit transaction (conflicting files)" in res["log_tail"]
    assert res["artifacts"] == []
    h = r.hgetall(nskey(ns, "job", jid))
    assert h[b"state"] == b"failed" and h[b"exit_code"] == b"7"
    assert runtime.containers(f"debate.job={jid}") == []


# ---------------------------------------------------------------- 6. flood

def printed_lines(runtime, ns, profile_dir):
    """Run the test image's mkarchiso by hand on a profile; its stdout and stderr lines."""
    out = Path(profile_dir).parent / "hand-out"
    out.mkdir(exist_ok=True)
    p = rt_run(runtime, "run", "--rm", "--network=none", "--init", f"--label=debate.ns={ns}",
               f"--volume={profile_dir}:/build/profile:ro", f"--volume={out}:/build/output:rw",
               f"--env=SOURCE_DATE_EPOCH={EPOCH}", "--env=LC_ALL=C", "--env=TZ=UTC", TEST_IMAGE,
               "mkarchiso", "-v", "-w", "/tmp/archiso-work", "-o", "/build/output", "/build/profile",
               timeout=120)
    return p.stdout.splitlines(), p.stderr.splitlines()


@pytest.mark.containers
def test_flood_arrives_batched_complete_and_capped(fleet, r, ns, broot, runtime, subscriber):
    n = 50000
    make_profile(broot, "flood", mode="flood", lines=n, seconds=0)
    flood = [f"flood {i:06d} ({i}/{n}) installing package-{i}..." for i in range(1, n + 1)]
    hand_out, hand_err = printed_lines(runtime, ns, broot / "flood")
    assert [x for x in hand_out if x.startswith("flood ")] == flood
    total = len(hand_out) + len(hand_err)

    # Uncapped: every line once, in order, in batches of at most log_batch_lines.
    w1 = fleet.start(runtime, worker={"log_batch_lines": 100})
    jid = "flood1-" + ns
    sub = subscriber(r, nskey(ns, "progress", jid))
    submit(r, ns, id=jid, profile="flood", output="o1")
    res = wait_result(r, ns, jid, 120)
    assert res["status"] == "succeeded", res
    sub.wait_for(nskey(ns, "progress", jid), lambda e: e["type"] == "finished", 30)
    evs = sub.msgs[nskey(ns, "progress", jid)]
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1)), "SUBSCRIBE missed or reordered events"
    logs = [e for e in evs if e["type"] == "log"]
    assert all(1 <= len(e["lines"]) <= 100 for e in logs)
    assert all("dropped" not in e for e in logs)
    out_lines = [x for e in logs if e["stream"] == "stdout" for x in e["lines"]]
    assert [x for x in out_lines if x.startswith("flood ")] == flood
    assert len(out_lines) == len(hand_out)
    assert sum(len(e["lines"]) for e in logs) == total
    assert res["dropped_lines"] == 0
    w1.stop()

    # Capped at 1000: exactly 1000 lines published, the rest counted.
    fleet.start(runtime, worker={"log_max_lines": 1000})
    jid2 = "flood2-" + ns
    sub2 = subscriber(r, nskey(ns, "progress", jid2))
    submit(r, ns, id=jid2, profile="flood", output="o2")
    res2 = wait_result(r, ns, jid2, 120)
    assert res2["status"] == "succeeded", res2
    sub2.wait_for(nskey(ns, "progress", jid2), lambda e: e["type"] == "finished", 30)
    logs2 = [e for e in sub2.msgs[nskey(ns, "progress", jid2)] if e["type"] == "log"]
    assert sum(len(e["lines"]) for e in logs2) == 1000
    assert all(len(e["lines"]) <= 256 for e in logs2)
    assert res2["dropped_lines"] == total - 1000, (res2["dropped_lines"], total)
    assert res2["artifacts"] == res["artifacts"]


# ---------------------------------------------------------------- 7. concurrency

@pytest.mark.containers
def test_concurrency_two_each_result_once(fleet, r, ns, broot, runtime):
    make_profile(broot, "p", mode="ok", seconds=1.5)
    fleet.start(runtime, worker={"concurrency": 2})
    seen, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            seen.append(len(running(runtime, f"debate.ns={ns}")))
            time.sleep(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        ids = [submit(r, ns, profile="p", output=f"o/{i}", memory="128m", cpus=0.5) for i in range(6)]
        got = [wait_result(r, ns, i, 90) for i in ids]
    finally:
        stop.set()
        t.join(30)
    assert [g["status"] for g in got] == ["succeeded"] * 6, got
    all_ids = [x["id"] for x in results(r, ns)]
    assert sorted(all_ids) == sorted(ids), all_ids
    assert len(seen) > 5, "too few samples of the running containers"
    assert max(seen) <= 2, f"more than 2 containers ran at once: {seen}"
    assert max(seen) == 2, f"the two slots never ran together: {seen}"
    for i in ids:
        assert r.hget(nskey(ns, "job", i), "state") == b"succeeded"
        assert r.llen(nskey(ns, "result", i)) == 0    # popped once by wait_result, nothing more
    assert runtime.containers(f"debate.ns={ns}") == []


# ---------------------------------------------------------------- 8. SUBSCRIBE

@pytest.mark.containers
def test_progress_seen_by_plain_subscribe(fleet, r, ns, broot, runtime, subscriber):
    make_profile(broot, "p", mode="ok", seconds=0.5)
    fleet.start(runtime)
    jid = "sub-" + ns
    ev_ch, pr_ch = nskey(ns, "events"), nskey(ns, "progress", jid)
    sub = subscriber(r, ev_ch, pr_ch)
    submit(r, ns, id=jid, profile="p", output="o")
    res = wait_result(r, ns, jid, 60)
    sub.wait_for(ev_ch, lambda e: e["type"] == "finished" and e["id"] == jid, 10)
    sub.wait_for(pr_ch, lambda e: e["type"] == "finished", 10)
    prog = sub.msgs[pr_ch]
    life = [e for e in sub.msgs[ev_ch] if e["id"] == jid]
    assert [e["seq"] for e in prog] == list(range(1, len(prog) + 1))
    assert {"started", "phase", "log", "finished"} <= {e["type"] for e in prog}
    assert not any(e["type"] == "log" for e in sub.msgs[ev_ch])
    # The events channel has exactly the non-log events of the job, same order, same content.
    assert life == [e for e in prog if e["type"] != "log"]
    assert life[0]["type"] == "started" and life[-1]["type"] == "finished"
    assert life[-1]["result"] == res
    # The stream holds what the subscriber saw.
    assert stream_events(r, ns, jid) == prog


# ---------------------------------------------------------------- 9. hardening

def caps(xs):
    return {x.upper().removeprefix("CAP_") for x in (xs or [])}


@pytest.mark.containers
def test_hardening_flags_on_real_container(fleet, r, ns, broot, runtime):
    make_profile(broot, "hang", mode="hang")
    cap_add = ["CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID"]
    w = fleet.start(runtime, sandbox={"cap_add": cap_add, "pids_limit": 321})
    jid = submit(r, ns, profile="hang", output="out/h", memory="200m", timeout=60)
    d = wait_running(runtime, jid)
    hc = d["HostConfig"]
    wid = w.wait_log(r"worker (\S+) ").group(1)

    assert d["Name"].lstrip("/") == f"{ns}-build-{jid}"
    assert hc["NetworkMode"] == "none"
    if runtime.name == "docker":
        assert "ALL" in [c.upper() for c in hc["CapDrop"]], hc["CapDrop"]
        assert caps(hc["CapAdd"]) == set(cap_add), hc["CapAdd"]
    else:
        # podman reports what is left, not the ALL it was given.
        assert caps(d["EffectiveCaps"]) == set(cap_add), d["EffectiveCaps"]
    # And the kernel agrees: the build's capability sets hold exactly those.
    status = Path(f"/proc/{d['State']['Pid']}/status").read_text()
    eff = int(next(x for x in status.splitlines() if x.startswith("CapEff:")).split()[1], 16)
    capnum = {"CHOWN": 0, "DAC_OVERRIDE": 1, "SETUID": 7, "SETGID": 6}
    assert eff == sum(1 << capnum[c] for c in cap_add), hex(eff)
    assert any(o == "no-new-privileges" or o == "no-new-privileges:true" for o in hc["SecurityOpt"] or []), \
        hc["SecurityOpt"]
    assert hc["ReadonlyRootfs"] is True
    assert hc["PidsLimit"] == 321
    assert hc["Memory"] == hc["MemorySwap"] == 200 * 1024 * 1024
    assert hc["Privileged"] is False
    mounts = {m["Destination"]: m for m in d["Mounts"]}
    assert mounts["/build/profile"]["RW"] is False
    assert mounts["/build/output"]["RW"] is True
    # The runtime binds the worker's private mount points of the held
    # directories, not the job's path: what the build sees at
    # /build/profile and /build/output must be the job's own directories.
    croot = Path(f"/proc/{d['State']['Pid']}/root")
    for dest, want in (("build/profile", broot / "hang"), ("build/output", broot / "out/h")):
        got, exp = (croot / dest).stat(), want.stat()
        assert (got.st_dev, got.st_ino) == (exp.st_dev, exp.st_ino), (dest, mounts["/" + dest]["Source"])
    labels = d["Config"]["Labels"]
    assert labels["debate.ns"] == ns and labels["debate.job"] == jid
    assert labels["debate.worker"] == wid and labels["debate.attempt"] == "1"
    assert int(labels["debate.expires"]) > time.time() + 60

    cancel(r, ns, jid)
    assert wait_result(r, ns, jid, 15)["status"] == "cancelled"
    wait_gone(runtime, jid, 10)


@pytest.mark.containers
def test_privileged_only_when_configured(fleet, r, ns, broot, runtime):
    make_profile(broot, "hang", mode="hang")
    # docker gives a privileged container every capability; where this
    # process lacks some (here CAP_SYS_RESOURCE), runc cannot apply them and
    # no privileged container can start at all.  The worker must then say
    # so as an `error` with the runtime's own words.
    probe = rt_run(runtime, "run", "--rm", "--privileged", "--network=none", f"--label=debate.ns={ns}",
                   TEST_IMAGE, "true", check=False)
    w = fleet.start(runtime, sandbox={"privileged": "yes"})
    jid = submit(r, ns, profile="hang", output="o", timeout=60)
    if probe.returncode != 0:
        print(f"{runtime.name} cannot run privileged containers here: {probe.stderr.strip()}")
        res = wait_result(r, ns, jid, 30)
        assert res["status"] == "error" and res["exit_code"] == -1, res
        reason = probe.stderr.strip().splitlines()[0].split("unable to start container process:")[-1].strip()
        assert reason[:40] in res["error"], (reason, res["error"])
        assert w.alive()
        wait_gone(runtime, jid, 10)
        return
    d = wait_running(runtime, jid)
    assert d["HostConfig"]["Privileged"] is True
    cancel(r, ns, jid)
    assert wait_result(r, ns, jid, 15)["status"] == "cancelled"
    wait_gone(runtime, jid, 10)


# ---------------------------------------------------------------- 10. gone after success

@pytest.mark.containers
def test_container_gone_after_success(fleet, r, ns, broot, runtime):
    make_profile(broot, "p", mode="ok", seconds=0)
    fleet.start(runtime)
    jid = submit(r, ns, profile="p", output="o")
    res = wait_result(r, ns, jid, 60)
    assert res["status"] == "succeeded", res
    assert runtime.containers(f"debate.job={jid}") == []
    assert runtime.containers(f"debate.ns={ns}") == []


# ---------------------------------------------------------------- 11. missing image

@pytest.mark.containers
def test_missing_image_is_error_and_worker_goes_on(fleet, r, ns, broot, runtime, tmp_path):
    missing = "localhost/debate-missing-" + ns + ":latest"
    assert rt_run(runtime, "image", "inspect", missing, check=False).returncode != 0
    make_profile(broot, "p", mode="ok", seconds=0)
    w = fleet.start(runtime, sandbox={"images": missing, "containerfile": str(tmp_path / "no-Containerfile")})
    bad = submit(r, ns, profile="p", output="o1", image=missing)
    res = wait_result(r, ns, bad, 60)
    # The error says why, naming the image; the build never ran.
    assert res["status"] == "error", res
    assert missing in res["error"], res["error"]
    assert res["exit_code"] == -1 and res["artifacts"] == [], res
    assert r.hget(nskey(ns, "job", bad), "state") == b"error"
    assert w.alive()
    good = submit(r, ns, profile="p", output="o2")
    assert wait_result(r, ns, good, 60)["status"] == "succeeded"
    assert w.alive()
    assert runtime.containers(f"debate.ns={ns}") == []
