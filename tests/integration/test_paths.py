"""Path races and shared outputs.

1. Two running jobs on one host never share or nest an output, and a
   running job's output is never another's profile (nor its profile
   another's output), whether the jobs are one worker's or two workers'
   on the same builds_root: the second is refused with bad_path naming
   the running job (and its worker), and dead-lettered, never lost.
   (exec mode: fast.)
2. A hostile build (customize_airootfs.sh in its profile) swaps OUT_DIR/sub
   and OUT_DIR/prof between a directory and a symlink to a canary directory
   outside builds_root every 20 ms: another worker refuses every job that
   names anything inside that output.  Then the same toggler runs as a
   host process nobody tracks, while another worker runs 40 jobs with
   output x/sub and 40 with profile x/prof.  Every one of them either runs
   inside builds_root or is refused with bad_path; the output canary stays
   empty and no build ever sees the profile canary's file.  (real podman.)
"""
import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import pytest

from tests.harness import SLOW, WORKER_BIN, dead, make_profile, nskey, poll, submit, wait_result, wid
from tests.harness import process as harness_process


def state(r, ns, job_id):
    v = r.hget(nskey(ns, "job", job_id), "state")
    return v.decode() if v else None


def dead_by_id(r, ns):
    out = {}
    for d in dead(r, ns):
        out.setdefault(d.get("id"), []).append(d)
    return out


def script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def overlap_build(tmp_path, broot, slow_seconds):
    """An exec build that fails with OVERLAP when another build runs in its
    output, sleeping as long as its profile's `seconds`; profile "slow"
    sleeps slow_seconds."""
    make_profile(broot, "slow")
    (broot / "slow" / "seconds").write_text(f"{slow_seconds}\n")
    return script(tmp_path / "build.sh",
                  'out="$DEBATE_OUTPUT"\n'
                  f'echo $$ > "{tmp_path}/pid.$DEBATE_JOB_ID"\n'
                  'if [ -e "$out/.running" ]; then echo "OVERLAP in $out" >&2; exit 9; fi\n'
                  ': > "$out/.running"\n'
                  'sleep "$(cat "$DEBATE_PROFILE/seconds" 2>/dev/null || echo 0)"\n'
                  'rm -f "$out/.running"\n'
                  'echo x > "$out/a.iso"\n')


# ------------------------------------------------------------ 1. overlaps, one worker

def test_overlapping_jobs_never_run_at_once(fleet, r, ns, broot, tmp_path):
    cmd = overlap_build(tmp_path, broot, slow_seconds=4)
    make_profile(broot, "p")
    w = fleet.start(sandbox={"runtime": "exec", "command": cmd}, worker={"concurrency": 4})

    a = submit(r, ns, profile="slow", output="o/a")
    poll(lambda: state(r, ns, a) == "running", 20, "job A running")
    # What may not run beside A, and why.
    refused = {
        submit(r, ns, profile="p", output="o/a"): f"output: \"o/a\" overlaps running job {a}'s output",
        submit(r, ns, profile="p", output="o"): f"output: \"o\" overlaps running job {a}'s output",
        submit(r, ns, profile="p", output="o/./a/sub"): f"overlaps running job {a}'s output",
        submit(r, ns, profile="o/a", output="o/e"): f"profile: \"o/a\" overlaps running job {a}'s output",
        submit(r, ns, profile="p", output="slow/x"): f"output: \"slow/x\" overlaps running job {a}'s profile",
        submit(r, ns, profile="p", output="."): "builds_root itself",
        submit(r, ns, profile="p", output="p/out"): "and the profile \"p\" overlap",
    }
    # What may: a sibling output, and the same profile shared read-only.
    beside = submit(r, ns, profile="slow", output="o/b")
    poll(lambda: state(r, ns, beside) == "running", 20, "the sibling job running beside A")
    assert state(r, ns, a) == "running"

    poll(lambda: all(state(r, ns, j) == "dead" for j in refused), 20, "the overlapping jobs refused")
    assert state(r, ns, a) == "running", "A must still be running: the refusals came while it ran"
    by_id = dead_by_id(r, ns)
    for j, why in refused.items():
        assert len(by_id.get(j, [])) == 1, (j, by_id.get(j))
        d = by_id[j][0]
        assert d["reason"] == "bad_path", d
        assert why in d["error"], (why, d["error"])
        assert msgpack.unpackb(d["payload"])["id"] == j   # the payload, untouched, not lost
        assert r.llen(nskey(ns, "result", j)) == 0
    for j in (a, beside):
        res = wait_result(r, ns, j, 30)
        assert res["status"] == "succeeded", res
        assert [x["name"] for x in res["artifacts"]] == ["a.iso"]
    # Once A is over, its output is free again.
    again = submit(r, ns, profile="p", output="o/a")
    assert wait_result(r, ns, again, 20)["status"] == "succeeded"
    assert "OVERLAP" not in w.log()
    assert w.alive()


def test_overlap_check_covers_every_worker_on_the_host(fleet, r, ns, broot, tmp_path):
    """Two worker processes on one builds_root: while worker 1 runs job A,
    worker 2 refuses (bad_path, naming A and worker 1) every job whose
    directories would nest with A's, and runs the ones beside it.  Once A
    is over its output is free to worker 2.  A worker that is SIGKILLed
    holds nothing: its registry file is dropped and its output is free."""
    cmd = overlap_build(tmp_path, broot, slow_seconds=6)
    make_profile(broot, "long")
    (broot / "long" / "seconds").write_text("120\n")
    make_profile(broot, "p")
    sb = {"runtime": "exec", "command": cmd, "stop_grace": 1}
    w1 = fleet.start(sandbox=sb, worker={"concurrency": 1}, queue={"max_attempts": 1})
    w1_id = wid(w1)
    a = submit(r, ns, profile="slow", output="o/a")
    poll(lambda: state(r, ns, a) == "running", 20, "job A running on worker 1")
    # Worker 1 is full: every job from here on is worker 2's.
    w2 = fleet.start(sandbox=sb, worker={"concurrency": 4}, queue={"max_attempts": 1})
    w2_id = wid(w2)
    w2.wait_log(r"redis cmd: connected", 20)
    elsewhere = f"(on worker {w1_id}, this host)"
    refused = {
        submit(r, ns, profile="p", output="o/a"): f"output: \"o/a\" overlaps running job {a}'s output {elsewhere}",
        submit(r, ns, profile="p", output="o"): f"output: \"o\" overlaps running job {a}'s output {elsewhere}",
        submit(r, ns, profile="p", output="o/a/sub"): f"overlaps running job {a}'s output {elsewhere}",
        submit(r, ns, profile="o/a", output="o/e"): f"profile: \"o/a\" overlaps running job {a}'s output {elsewhere}",
        submit(r, ns, profile="p", output="slow/x"): f"output: \"slow/x\" overlaps running job {a}'s profile {elsewhere}",
    }
    poll(lambda: all(state(r, ns, j) == "dead" for j in refused), 20, "the overlapping jobs refused")
    beside = submit(r, ns, profile="slow", output="o/b")
    poll(lambda: state(r, ns, beside) == "running", 20, "the sibling job running on worker 2 beside A")
    assert state(r, ns, a) == "running", "A must still be running: the refusals came while it ran"
    by_id = dead_by_id(r, ns)
    for j, why in refused.items():
        assert len(by_id.get(j, [])) == 1, (j, by_id.get(j))
        d = by_id[j][0]
        assert d["reason"] == "bad_path" and d["worker"] == w2_id, d
        assert why in d["error"], (why, d["error"])
        assert msgpack.unpackb(d["payload"])["id"] == j
    for j, w in ((a, w1_id), (beside, w2_id)):
        res = wait_result(r, ns, j, 30)
        assert res["status"] == "succeeded" and res["worker"] == w, res
    # A is over: its output is free to the other worker.
    again = submit(r, ns, profile="p", output="o/a")
    res = wait_result(r, ns, again, 20)
    assert res["status"] == "succeeded" and res["worker"] == w2_id, res

    # A worker killed with its job holds nothing any more.
    c = submit(r, ns, profile="long", output="o/c")
    poll(lambda: state(r, ns, c) == "running" and (tmp_path / f"pid.{c}").exists(), 20,
         "job C running on worker 1")
    assert r.hget(nskey(ns, "job", c), "worker").decode() == w1_id
    build_pid = int((tmp_path / f"pid.{c}").read_text())
    held = broot / "jobs" / ".held"
    assert len(list(held.iterdir())) == 2, list(held.iterdir())
    w1.signal(signal.SIGKILL)
    w1.wait(10)
    os.kill(build_pid, signal.SIGKILL)
    (broot / "o" / "c" / ".running").unlink()
    d = submit(r, ns, profile="p", output="o/c")
    res = wait_result(r, ns, d, 20)
    assert res["status"] == "succeeded" and res["worker"] == w2_id, res
    assert len(list(held.iterdir())) == 1, "the killed worker's registry file is still there"
    assert "OVERLAP" not in w2.log() and "OVERLAP" not in w1.log()
    assert w2.alive()


def test_an_idle_workers_registry_file_is_empty_and_a_dead_ones_is_swept(fleet, r, ns, broot):
    """A worker holding nothing keeps its file in builds_root/jobs/.held/
    empty (one newline), so every other worker's check passes it by with one stat (in a
    fleet most workers are idle at any moment).  One SIGKILLed while idle
    leaves that empty file behind, which no reader would delete (it is
    skipped unread); the next worker to open the registry (at its first
    job) deletes it."""
    make_profile(broot, "p")
    held = broot / "jobs" / ".held"
    w1 = fleet.start()
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o/1"), 20)
    assert res["status"] == "succeeded", res
    poll(lambda: [f.read_bytes() for f in held.iterdir()] == [b"\n"], 10,
         "worker 1's registry file empty (one newline) once its job is over")
    (left,) = list(held.iterdir())
    w1.signal(signal.SIGKILL)
    w1.wait(10)
    assert left.exists(), "the killed worker's file is there until a worker sweeps"
    w2 = fleet.start()
    res = wait_result(r, ns, submit(r, ns, profile="p", output="o/2"), 20)
    assert res["status"] == "succeeded" and res["worker"] == wid(w2), res
    assert not left.exists(), "the idle worker killed before is still in the registry"
    poll(lambda: [f.read_bytes() for f in held.iterdir()] == [b"\n"], 10, "worker 2's file alone, empty")
    assert w2.alive()


def test_a_job_the_registry_cannot_record_is_refused(fleet, r, ns, broot, tmp_path):
    """builds_root's filesystem is full (a build can fill it): a worker that
    cannot record a job's directories in the host's registry refuses the
    job (bad_path, saying why) rather than run it where the other workers
    cannot see it.  With room again, the same paths run."""
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(broot)], check=True)
    try:
        cmd = overlap_build(tmp_path, broot, slow_seconds=0)
        make_profile(broot, "p")
        w = fleet.start(sandbox={"runtime": "exec", "command": cmd})
        w.wait_log(r"redis cmd: connected", 20)
        filler = broot / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError:
                pass
        j = submit(r, ns, profile="p", output="o/1")
        poll(lambda: state(r, ns, j) == "dead", 20, "the job refused")
        (d,) = dead_by_id(r, ns)[j]
        assert d["reason"] == "bad_path", d
        assert "cannot record the job's directories in the host's registry" in d["error"], d
        assert "No space left on device" in d["error"], d
        filler.unlink()
        res = wait_result(r, ns, submit(r, ns, profile="p", output="o/1"), 20)
        assert res["status"] == "succeeded", res
        assert w.alive() and w.stop() == 0
    finally:
        subprocess.run(["umount", "-l", str(broot)], check=False)


# ------------------------------------------------------------ 2. the toggler, real podman

TOGGLER = r'''#!/bin/sh
# Swap sub and prof between a directory and a symlink out of builds_root
# every 20 ms, until "stop" appears or {secs} s have passed; hold still
# while "pause" exists.
cd "$OUT_DIR" || exit 1
mkdir -p hide
end=$(( $(date +%s) + {secs} ))
echo "toggler: toggling"
i=0
while [ "$(date +%s)" -lt "$end" ] && [ ! -e stop ]; do
    i=$((i + 1))
    mv sub "hide/s$i" 2>/dev/null; ln -s '{canary_out}' sub 2>/dev/null
    mv prof "hide/p$i" 2>/dev/null; ln -s '{canary_prof}' prof 2>/dev/null
    sleep 0.02
    rm -f sub prof 2>/dev/null
    mv "hide/s$i" sub 2>/dev/null || mkdir sub 2>/dev/null
    mv "hide/p$i" prof 2>/dev/null
    sleep 0.02
    # "pause": hold still with both directories in place (the test says when)
    while [ -e pause ] && [ ! -e stop ]; do : > paused; sleep 0.02; done
done
echo "toggler: done after $i swaps"
'''

N_VICTIMS = 40
ISO = "debatetest-2023.11.14-x86_64.iso"


def tree_has_no_outside_writes(canary):
    """What is in the canary directory, recursively."""
    return sorted(str(p.relative_to(canary)) for p in Path(canary).rglob("*"))


@pytest.mark.slow
def test_toggling_build_cannot_redirect_later_jobs(fleet, r, ns, broot, tmp_path, podman):
    canary_out = tmp_path / "canary-out"        # outside builds_root: must stay empty
    canary_out.mkdir()
    canary_prof = tmp_path / "canary-prof"      # outside builds_root: no build may see it
    make_profile(tmp_path, "canary-prof")
    (canary_prof / "SECRET-host-file").write_text("secret\n")

    make_profile(broot, "tog", seconds=0)
    hook = broot / "tog" / "airootfs" / "root"
    hook.mkdir(parents=True)
    (hook / "customize_airootfs.sh").write_text(
        TOGGLER.replace("{secs}", "150").replace("{canary_out}", str(canary_out))
        .replace("{canary_prof}", str(canary_prof)))
    (broot / "x" / "sub").mkdir(parents=True)
    make_profile(broot / "x", "prof", seconds=0)
    make_profile(broot, "v", seconds=0)

    hostile = fleet.start(podman, worker={"concurrency": 1})
    hostile_id = wid(hostile)
    tog = submit(r, ns, profile="tog", output="x", timeout=300)
    poll(lambda: any(b"toggler: toggling" in (f.get(b"event") or b"")
                     for _, f in r.xrange(nskey(ns, "log", tog))), 60, "the toggler toggling")

    # While the hostile build runs, no job of another worker on this host
    # may use anything inside its output at all (the toggler holds still
    # meanwhile, so each is found and refused as inside the running output).
    (broot / "x" / "pause").write_text("")
    poll(lambda: (broot / "x" / "paused").exists(), 30, "the toggler to hold still")
    victims = fleet.start(podman, worker={"concurrency": 2})
    early = {submit(r, ns, profile="v", output="x/sub"): "output: \"x/sub\"" for _ in range(3)}
    early.update({submit(r, ns, profile="x/prof", output=f"pe/{i}"): "profile: \"x/prof\"" for i in range(3)})
    poll(lambda: all(state(r, ns, j) == "dead" for j in early), 60, "the victims inside the build's output refused")
    by_id = dead_by_id(r, ns)
    for j, what in early.items():
        (d,) = by_id[j]
        assert d["reason"] == "bad_path", d
        assert f"{what} overlaps running job {tog}'s output (on worker {hostile_id}, this host)" in d["error"], d
    (broot / "x" / "stop").write_text("")
    res_tog = wait_result(r, ns, tog, 60)
    assert res_tog["status"] == "succeeded", res_tog
    for name in ("stop", "pause", "paused"):
        (broot / "x" / name).unlink()

    # The same race against what no worker knows of (a build of another
    # host on a shared builds_root, an operator's script): the toggler runs
    # on this host as the test's own process.
    for name in ("sub", "prof"):
        if (broot / "x" / name).is_symlink():
            (broot / "x" / name).unlink()
    (broot / "x" / "sub").mkdir(exist_ok=True)
    if not (broot / "x" / "prof").is_dir():
        make_profile(broot / "x", "prof", seconds=0)
    toggler = subprocess.Popen(
        ["sh", "-c", TOGGLER.replace("{secs}", "150").replace("{canary_out}", str(canary_out))
         .replace("{canary_prof}", str(canary_prof))],
        env=dict(os.environ, OUT_DIR=str(broot / "x")), stdout=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        assert toggler.stdout.readline().strip() == "toggler: toggling"
        run_victims(r, ns, broot, toggler, canary_out, canary_prof)
    finally:
        if toggler.poll() is None:
            os.killpg(toggler.pid, signal.SIGKILL)
        toggler.wait()
    assert hostile.alive() and victims.alive()


def run_victims(r, ns, broot, toggler, canary_out, canary_prof):
    """Run N_VICTIMS jobs with output x/sub and N_VICTIMS with profile x/prof
    while the toggler runs; check nothing reached the canaries."""
    # Keep the queue fed, a pair at a time, until N_VICTIMS of each kind have
    # run (a refusal takes no time, a run half a second: counting runs keeps
    # the dangerous case, a job that passed the check, at N_VICTIMS).
    outs, profs, final, ran_n = [], [], {}, {"out": 0, "prof": 0}
    deadline = time.time() + 120 * SLOW
    while min(ran_n.values()) < N_VICTIMS:
        assert time.time() < deadline, f"only {ran_n} victims ran in time"
        if r.llen(nskey(ns, "queue")) < 2:
            i = len(profs)
            outs.append(submit(r, ns, profile="v", output="x/sub"))
            profs.append(submit(r, ns, profile="x/prof", output=f"pv/{i}"))
        for kind, ids in (("out", outs), ("prof", profs)):
            for j in ids:
                if j not in final:
                    st = state(r, ns, j)
                    if st in ("succeeded", "failed", "error", "dead"):
                        final[j] = st
                        ran_n[kind] += st != "dead"
        time.sleep(0.1)
    everyone = outs + profs

    def settled():
        return all(state(r, ns, j) in ("succeeded", "failed", "error", "dead") for j in everyone)
    poll(settled, 60, "every victim job finished or refused")
    assert toggler.poll() is None, "the toggler must have toggled all along"
    (broot / "x" / "stop").write_text("")
    toggler.wait(10)

    # Nothing was written outside builds_root ...
    assert tree_has_no_outside_writes(canary_out) == [], "a job wrote outside builds_root"
    assert sorted(os.listdir(canary_prof)) == ["SECRET-host-file", "packages.x86_64", "profiledef.sh"]
    # ... and no build was given the host directory as its profile (the ISO lists the profile's files).
    for i, j in enumerate(profs):
        if state(r, ns, j) != "succeeded":
            continue
        iso = (broot / "pv" / str(i) / ISO).read_bytes()
        assert b"SECRET" not in iso, f"job {j} was given the host directory as its profile"
        assert b"profiledef.sh" in iso

    by_id = dead_by_id(r, ns)
    ran = {"out": 0, "prof": 0}
    refused = {"out": 0, "prof": 0}
    for kind, ids in (("out", outs), ("prof", profs)):
        for j in ids:
            st = state(r, ns, j)
            if st == "dead":
                (d,) = by_id[j]
                assert d["reason"] == "bad_path", d
                assert any(s in d["error"] for s in ("is a symlink", "No such file", "overlaps running job")), d
                refused[kind] += 1
                continue
            res = wait_result(r, ns, j, 10)
            if res["status"] == "error" and "was removed before the build could start" in res["error"]:
                continue    # the toggler deleted the held directory: nothing was mounted at all
            assert res["status"] == "succeeded", (kind, res)
            # (x/sub may also hold what the toggler moved into it: names are relative to it.)
            assert ISO in [a["name"] for a in res["artifacts"]], res
            ran[kind] += 1
    # Each kind hit both states of the toggle: the race was really run.
    print(f"ran {ran}, refused {refused}")
    assert ran["out"] and refused["out"] and ran["prof"] and refused["prof"], (ran, refused)


# ------------------------------------------------------------ 3. docker, worker in its own mount namespace

def test_docker_sees_the_held_directory_from_a_private_mount_namespace(fleet, r, ns, broot, tmp_path,
                                                                       dockerd_rt, monkeypatch):
    """Under the systemd unit (ProtectSystem=, PrivateTmp=) the worker has a
    mount namespace of its own, whose mounts dockerd (in PID 1's) never
    sees: the held directory must still be what the container writes to."""
    wrapper = script(tmp_path / "unshared-worker",
                     f'exec unshare --mount --propagation slave {WORKER_BIN} "$@"\n')
    monkeypatch.setattr(harness_process, "WORKER_BIN", wrapper)   # what Worker.start() runs
    make_profile(broot, "p", seconds=0)
    w = fleet.start(dockerd_rt)
    jid = submit(r, ns, profile="p", output="o/d")
    res = wait_result(r, ns, jid, 90)
    assert res["status"] == "succeeded", res
    assert [a["name"] for a in res["artifacts"]] == [ISO], res
    assert (broot / "o" / "d" / ISO).stat().st_size == res["artifacts"][0]["size"]
    assert w.alive()
    assert os.readlink(f"/proc/{w.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt"), "not unshared"


# ------------------------------------------------------------ 4. mount points of a killed worker

def our_mounts(under):
    """Mount points below the directory under, from our mountinfo."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split(" ")[4].encode().decode("unicode_escape")
        if mp.startswith(str(under) + "/"):
            out.append(mp)
    return out


def test_mount_points_of_a_killed_worker_are_swept(fleet, r, ns, broot, tmp_path, podman):
    """A SIGKILLed worker cannot unmount its jobs' mount points; the next
    worker using the same runtime directory unmounts them before its first
    mount (the dead worker's lock on its directory is free), and leaves a
    live worker's alone."""
    run = tmp_path / "run"
    run.mkdir()
    rt = podman.with_env(RUNTIME_DIRECTORY=str(run))
    make_profile(broot, "hang", mode="hang")
    make_profile(broot, "p", seconds=0)
    live = fleet.start(rt)
    held = submit(r, ns, profile="hang", output="o/live", timeout=120)
    doomed = fleet.start(rt)
    lost = submit(r, ns, profile="hang", output="o/lost", timeout=120)
    poll(lambda: len(our_mounts(run)) == 4, 30, "both workers' mount points")
    poll(lambda: r.hget(nskey(ns, "job", held), "worker") is not None
         and r.hget(nskey(ns, "job", lost), "worker") is not None, 30, "both jobs claimed")
    owner = {j: r.hget(nskey(ns, "job", j), "worker").decode() for j in (held, lost)}
    doomed_id = doomed.wait_log(r"notice: worker (\S+) ").group(1)
    assert owner[lost] == doomed_id or owner[held] == doomed_id
    dead_job = lost if owner[lost] == doomed_id else held
    doomed.proc.kill()
    doomed.proc.wait()
    # Once the reaper puts it back, it must not take the fresh worker's slot.
    r.hset(nskey(ns, "cancel"), dead_job, str(time.time()))
    left = [m for m in our_mounts(run) if dead_job in m]
    assert len(left) == 2, our_mounts(run)

    fresh = fleet.start(rt)
    jid = submit(r, ns, profile="p", output="o/fresh")
    assert wait_result(r, ns, jid, 60)["status"] == "succeeded"
    fresh.wait_log(r"unmounted .*" + dead_job + r"\.1\.output, left by a worker that is gone", 10)
    remaining = our_mounts(run)
    assert not [m for m in remaining if dead_job in m], remaining
    alive_job = held if dead_job == lost else lost
    assert len([m for m in remaining if alive_job in m]) == 2, remaining
    assert live.alive()
    # Ends cleanly: the live job cancelled, its mount points gone with it.
    r.hset(nskey(ns, "cancel"), alive_job, str(time.time()))
    assert wait_result(r, ns, alive_job, 30)["status"] == "cancelled"
    poll(lambda: not [m for m in our_mounts(run) if alive_job in m], 10, "the live job's mount points gone")
