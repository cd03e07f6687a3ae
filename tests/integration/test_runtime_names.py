"""Container names and ids.

Names: when `run` fails because the container name is taken (an orphan of
an earlier attempt), the worker removes that container and starts the
build once more.  The conflict is read from the runtime (exit 125, then
`inspect NAME` shows a container that is not ours), never from the
build's output; the timeout, warning and stats cover the job from its
first start; a stop asked between the two runs ends the job.  A fake
runtime (a shell script named like podman) plays the conflict, and real
podman checks that a build printing the runtime's words is not retried.

Ids: the orphan sweep lists a dead worker's containers by id and
removes each by id after reading its label again, so a container that
took the same name meanwhile (a live worker re-running the requeued job)
survives.  Real podman, with a wrapper that swaps the containers right
after the sweep's `ps`, where the race would be.
"""
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness import SLOW, TEST_IMAGE, Runtime, make_profile, nskey, stream_events, submit, wait_result


OTHER_ID = "a" * 64     # the orphan that holds our name (fake runtime)
OUR_ID = "b" * 64       # our own container (fake runtime)

FAKE_PODMAN = r'''#!/bin/sh
# A stand-in container runtime: plays a name conflict, then runs the build.
# State in $FAKE_STATE: conflicts (how many runs fail with a conflict),
# mode (ok or hang), rm_sleep (seconds rm takes); logs runs, rms, calls.
S=$FAKE_STATE
echo "$*" >> "$S/calls"
cmd=$1; shift
case $cmd in
version|images) exit 0 ;;
image) exit 0 ;;
ps) exit 0 ;;
inspect)
    # "<id> <debate.ns> <debate.job>" of whoever holds the name
    if [ -f "$S/taken" ]; then echo "@OTHER@ $(cat "$S/taken")"; exit 0; fi
    echo "Error: no such container" >&2; exit 125 ;;
rm)
    for a in "$@"; do last=$a; done
    [ -f "$S/rm_sleep" ] && sleep "$(cat "$S/rm_sleep")"
    echo "$last" >> "$S/rms"
    [ "$last" = "@OTHER@" ] && rm -f "$S/taken"
    exit 0 ;;
stop|kill)
    [ -f "$S/run.pid" ] && kill "$(cat "$S/run.pid")" 2>/dev/null
    exit 0 ;;
run)
    name= cid= out= lns= ljob=
    for a in "$@"; do
        case $a in
        --name=*) name=${a#--name=} ;;
        --label=debate.ns=*) lns=${a#--label=debate.ns=} ;;
        --label=debate.job=*) ljob=${a#--label=debate.job=} ;;
        --cidfile=*) cid=${a#--cidfile=} ;;
        --volume=*:/build/output:rw) out=${a#--volume=}; out=${out%:/build/output:rw} ;;
        esac
    done
    n=$(cat "$S/conflicts" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then
        echo $((n - 1)) > "$S/conflicts"
        : > "$S/taken"
        # held by an orphan of this job, or (file "foreign") by another namespace's build
        if [ -f "$S/taken" ]; then
            if [ -f "$S/foreign" ]; then cat "$S/foreign" > "$S/taken"; else echo "$lns $ljob" > "$S/taken"; fi
        fi
        echo conflict >> "$S/runs"
        echo "Error: creating container storage: the container name \"$name\" is already in use by @OTHER@. You have to remove that container to be able to reuse that name: that name is already in use" >&2
        exit 125
    fi
    echo "@OUR@" > "$cid"
    echo run >> "$S/runs"
    echo "[mkarchiso] INFO: Validating options..."
    if [ "$(cat "$S/mode" 2>/dev/null)" = hang ]; then
        echo $$ > "$S/run.pid"
        exec sleep 600
    fi
    echo iso > "$out/a.iso"
    echo built
    exit 0 ;;
esac
echo "fake-podman: unexpected $cmd" >&2
exit 2
'''


@pytest.fixture
def fake_rt(tmp_path):
    """A Runtime whose binary is the fake above, and its state directory."""
    state = tmp_path / "fake-state"
    state.mkdir()
    path = tmp_path / "bin" / "fake-podman"
    path.parent.mkdir()
    path.write_text(FAKE_PODMAN.replace("@OTHER@", OTHER_ID).replace("@OUR@", OUR_ID))
    path.chmod(0o755)
    env = dict(os.environ, FAKE_STATE=str(state))
    rt = Runtime("podman", [str(path)], env, {"runtime": str(path), "image": TEST_IMAGE, "sudo": "no"})
    rt.state = state
    rt.cleanup = lambda ns: None
    return rt


def lines(path):
    return Path(path).read_text().split("\n")[:-1] if Path(path).exists() else []


def test_conflict_once_then_success(fleet, r, ns, broot, fake_rt):
    """The name is taken once: the worker asks the runtime, removes the
    other container by its id, runs the build again; one result."""
    (fake_rt.state / "conflicts").write_text("1\n")
    make_profile(broot, "p")
    w = fleet.start(fake_rt)
    jid = submit(r, ns, profile="p", output="o/1")
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "succeeded" and res["attempt"] == 1, res
    assert [a["name"] for a in res["artifacts"]] == ["a.iso"]
    assert lines(fake_rt.state / "runs") == ["conflict", "run"]
    assert lines(fake_rt.state / "rms")[0] == OTHER_ID      # by id, not by name
    assert any(c.startswith("inspect --type=container --format={{.Id}} {{index .Config.Labels \"debate.ns\"}} "
                            f"{{{{index .Config.Labels \"debate.job\"}}}} {ns}-build-{jid}")
               for c in lines(fake_rt.state / "calls"))
    w.wait_log(rf"job {jid}: container name {ns}-build-{jid} is taken by an orphan", 1)
    assert r.llen(nskey(ns, "results")) == 1


def test_name_held_by_another_namespaces_build_is_left_alone(fleet, r, ns, broot, fake_rt):
    """The name is taken by a container whose labels say it is another
    namespace's job (a live build of another tenant whose namespace and id
    happen to spell the same name): it is neither removed nor stopped, and
    this job ends with the runtime's error instead of a second run."""
    (fake_rt.state / "conflicts").write_text("1\n")
    (fake_rt.state / "foreign").write_text(f"{ns}-build victim\n")
    make_profile(broot, "p")
    w = fleet.start(fake_rt)
    jid = submit(r, ns, profile="p", output="o/1")
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "error" and "the container runtime failed (exit 125)" in res["error"], res
    assert "already in use" in res["error"], res
    assert lines(fake_rt.state / "runs") == ["conflict"]
    assert lines(fake_rt.state / "rms") == [], "the other namespace's container was removed"
    assert not [c for c in lines(fake_rt.state / "calls") if c.split()[0] in ("rm", "stop", "kill")]
    w.wait_log(rf"job {jid}: container name {ns}-build-{jid} is held by a{{12}}, which is not this "
               rf"job's \(debate.ns, debate.job: {ns}-build victim\); left alone", 1)
    assert w.alive()


def test_timeout_covers_the_retried_run(fleet, r, ns, broot, fake_rt):
    """The retried run hangs: the job's timeout, counted from the first
    start, still stops it (timed_out), with the warning and stats events."""
    (fake_rt.state / "conflicts").write_text("1\n")
    (fake_rt.state / "mode").write_text("hang\n")
    make_profile(broot, "p")
    fleet.start(fake_rt)
    t0 = time.time()
    jid = submit(r, ns, profile="p", output="o/1", warning=1, timeout=3)
    res = wait_result(r, ns, jid, 30)
    took = time.time() - t0
    assert res["status"] == "timed_out", res
    assert took < 3 + 2 + 6 * SLOW, f"timed out {took:.1f}s after submit (timeout 3, stop_grace 2)"
    assert lines(fake_rt.state / "runs") == ["conflict", "run"]
    types = [e["type"] for e in stream_events(r, ns, jid)]
    assert types.count("warning") == 1 and "stats" in types, types
    assert types.count("started") == 1 and types[-1] == "finished"


def test_cancel_during_the_rm_ends_the_job(fleet, r, ns, broot, fake_rt):
    """A cancel seen while the conflicting container is being removed ends
    the job cancelled; the build is not started again."""
    (fake_rt.state / "conflicts").write_text("1\n")
    (fake_rt.state / "rm_sleep").write_text("3\n")
    make_profile(broot, "p")
    w = fleet.start(fake_rt)
    jid = submit(r, ns, profile="p", output="o/1")
    w.wait_log(rf"job {jid}: container name .* is taken by an orphan", 20)
    r.hset(nskey(ns, "cancel"), jid, time.time())
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "cancelled" and res["exit_code"] == -1, res
    time.sleep(1)
    assert lines(fake_rt.state / "runs") == ["conflict"], "started again after the cancel"
    # Nothing of ours was removed by name: the name is the other container's.
    assert all(x == OTHER_ID for x in lines(fake_rt.state / "rms")), lines(fake_rt.state / "rms")
    assert r.hget(nskey(ns, "job", jid), "state") == b"cancelled"


def test_no_conflict_without_a_container_of_that_name(fleet, r, ns, broot, fake_rt, tmp_path):
    """The runtime exits 125 and no container has our name: no retry, the
    job is recorded `error` once."""
    make_profile(broot, "p")
    (fake_rt.state / "conflicts").write_text("1\n")
    # The conflict text is printed, but nothing holds the name.
    script = fake_rt.cmd[0]
    Path(script).write_text(Path(script).read_text().replace(': > "$S/taken"', ':'))
    fleet.start(fake_rt)
    jid = submit(r, ns, profile="p", output="o/1")
    res = wait_result(r, ns, jid, 30)
    assert res["status"] == "error" and "exit 125" in res["error"], res
    assert lines(fake_rt.state / "runs") == ["conflict"]
    assert lines(fake_rt.state / "rms") == []


@pytest.mark.containers
def test_build_printing_the_conflict_is_not_retried(fleet, r, ns, broot, podman):
    """A real podman build whose customize_airootfs.sh prints the
    runtime's conflict message and exits 125 runs once; its outcome is
    recorded as it is."""
    make_profile(broot, "p", mode="ok")
    hook = broot / "p" / "airootfs" / "root" / "customize_airootfs.sh"
    hook.parent.mkdir(parents=True)
    hook.write_text('echo run >> "$OUT_DIR/runs"\n'
                    'echo "Error: the container name is already in use" >&2\nexit 125\n')
    w = fleet.start(podman)
    jid = submit(r, ns, profile="p", output="o/1")
    res = wait_result(r, ns, jid, 60)
    assert res["status"] == "error", res
    assert (broot / "o" / "1" / "runs").read_text().split() == ["run"], "the build ran twice"
    assert "taken by an orphan" not in w.log()
    assert r.llen(nskey(ns, "results")) == 1


WRAPPER = r'''#!/bin/sh
# podman, and right after the orphan sweep's ps (the race window) run the
# test's hook once: it swaps the listed container for a live one of the
# same name.
out=$(podman "$@"); rc=$?
case "$1 $2 $3" in
"ps --all --filter=label=debate.worker=@DEAD@")
    if [ -f "@HOOK@" ]; then sh "@HOOK@" >/dev/null 2>&1; rm -f "@HOOK@"; fi ;;
esac
[ -n "$out" ] && printf '%s\n' "$out"
exit $rc
'''


@pytest.mark.containers
def test_orphan_sweep_removes_by_id_and_spares_a_new_owner(fleet, r, ns, broot, podman, tmp_path):
    """A dead worker left two containers on this host.  Between the
    sweep's ps and its rm, one of them goes away and a live worker's
    container takes its name (the requeued job restarted): the sweep
    removes the other orphan, and the live container survives."""
    dead_id = f"dead-{ns}"
    live_id = f"live-{ns}"
    hook = tmp_path / "swap.sh"
    wrap = tmp_path / "bin" / "wrap-podman"
    wrap.parent.mkdir()
    wrap.write_text(WRAPPER.replace("@DEAD@", dead_id).replace("@HOOK@", str(hook)))
    wrap.chmod(0o755)
    rt = Runtime("podman", podman.cmd, podman.env, dict(podman.ini, runtime=str(wrap)))

    def start(name, worker):
        subprocess.run([*podman.cmd, "run", "-d", "--init", "--network=none", f"--name={name}",
                        f"--label=debate.ns={ns}", f"--label=debate.worker={worker}",
                        f"--label=debate.job={name}", TEST_IMAGE, "sleep", "600"],
                       check=True, capture_output=True, env=podman.env, timeout=60)

    def worker_label(name):
        p = subprocess.run([*podman.cmd, "inspect", "--type=container",
                            "--format={{index .Config.Labels \"debate.worker\"}}", name],
                           capture_output=True, text=True, env=podman.env, timeout=60)
        return p.stdout.strip() if p.returncode == 0 else None

    raced, other = f"{ns}-build-j1", f"{ns}-build-j2"
    start(raced, dead_id)
    start(other, dead_id)
    hook.write_text(f"{' '.join(podman.cmd)} rm --force --time=0 {raced}\n"
                    f"{' '.join(podman.cmd)} run -d --init --network=none --name={raced} --label=debate.ns={ns} "
                    f"--label=debate.worker={live_id} {TEST_IMAGE} sleep 600\n")
    try:
        fleet.runtimes.append(podman)       # cleanup of every debate.ns container at the end
        w = fleet.start(rt)
        host = w.wait_log(r"notice: worker (\S+) ").group(1)
        poll_until = time.time() + 20 * SLOW
        while r.hget(nskey(ns, "hosts"), host) is None and time.time() < poll_until:
            time.sleep(0.05)
        hostname = r.hget(nskey(ns, "hosts"), host).decode()
        r.sadd(nskey(ns, "orphans", hostname), dead_id)
        w.wait_log(rf"removing container {other} of dead worker {dead_id}", 30)
        deadline = time.time() + 30 * SLOW
        while worker_label(other) is not None and time.time() < deadline:
            time.sleep(0.2)
        assert worker_label(other) is None, "the dead worker's orphan is still there"
        assert not hook.exists(), "the race hook never ran"
        time.sleep(2)       # any rm the sweep started has finished
        assert worker_label(raced) == live_id, "the live worker's container was removed"
        assert f"removing container {raced}" not in w.log()
        w.wait_log(rf"orphans of {dead_id}: container {raced} \(\w+\) is (gone already|not that worker's)", 5)
    finally:
        for name in (raced, other):
            subprocess.run([*podman.cmd, "rm", "--force", "--time=0", name], capture_output=True,
                           env=podman.env, timeout=120)
