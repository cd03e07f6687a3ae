"""container: podman jobs through the worker against plain `podman run`."""
import shutil
import subprocess
import time

import msgpack

from harness import REPO, TEST_IMAGE, BenchError, children_of, cmdline, med
from tests.harness import nskey
from workloads import register


def plain_argv(argv, ns, k, tmp, broot):
    """The worker's own `podman run` argv with this run's name, cidfile and labels,
    and the real directories where the worker bound its own mount points of them."""
    out = []
    for a in argv:
        if a.startswith("--volume=") and a.endswith(":/build/profile:ro"):
            a = f"--volume={broot / 'p'}:/build/profile:ro"
        elif a.startswith("--volume=") and a.endswith(":/build/output:rw"):
            o = broot / "o" / f"plain-{ns}-{k}"
            o.mkdir(parents=True, exist_ok=True)
            a = f"--volume={o}:/build/output:rw"
        elif a.startswith("--name="):
            a = f"--name={ns}-plain-{k}"
        elif a.startswith("--cidfile="):
            a = f"--cidfile={tmp}/plain-{ns}-{k}.cid"
        elif a.startswith("--label=debate.job="):
            a = f"--label=debate.job=plain-{k}"
        elif a.startswith("--label=debate.worker="):
            a = "--label=debate.worker=bench-plain"
        out.append(a)
    return out


def run_container(b, reps, n=30):
    if shutil.which("podman") is None:
        raise BenchError("podman is not installed (scripts/install-deps)")
    env = b.podman_env()
    subprocess.run([str(REPO / "scripts" / "make-test-image"), "podman"], check=True, env=env,
                   capture_output=True, timeout=600)
    runs = []
    captured = None
    for rep in range(reps):
        ns = b.ns("c")
        b.podman_namespaces.append(ns)
        ini = b.ini(ns, sandbox={"runtime": "podman", "image": TEST_IMAGE, "sudo": "no",
                                 "command": "/bin/echo hello", "stop_grace": 2})
        w = b.worker(ini, env=env)
        wt, pt, dur = [], [], []
        try:
            b.wait_blocked(1, [w])

            def worker_job(k, capture=False):
                jid = f"c{k:04d}"
                t0 = time.perf_counter()
                b.push_jobs(ns, [jid])
                argv = None
                if capture:
                    deadline = time.time() + 60
                    while argv is None and time.time() < deadline:
                        for c in children_of(w.pid):
                            cl = cmdline(c)
                            if cl and "run" in cl and any(x.startswith("--name=") for x in cl):
                                argv = cl
                                break
                        time.sleep(0.001)
                got = b.r.blpop(nskey(ns, "result", jid), timeout=100)
                t1 = time.perf_counter()
                if got is None:
                    raise BenchError(f"container: no result for {jid}")
                res = msgpack.unpackb(got[1])
                if res["status"] != "succeeded" or "hello" not in res["log_tail"]:
                    raise BenchError(f"container: job {jid}: {res['status']} {res['error']} {res['log_tail']}")
                return t1 - t0, res["duration"], argv

            def plain(k):
                argv = plain_argv(captured, ns, k, b.tmp, b.broot)
                t0 = time.perf_counter()
                p = subprocess.run(argv, capture_output=True, env=env, timeout=120)
                t1 = time.perf_counter()
                if p.returncode != 0 or p.stdout != b"hello\n":
                    raise BenchError(f"plain podman run failed ({p.returncode}): {p.stderr[-500:]!r}")
                return t1 - t0

            # Warm-up (discarded); the first one also shows us the worker's argv.
            _, _, argv = worker_job(0, capture=captured is None)
            if captured is None:
                if argv is None:
                    raise BenchError("container: could not read the worker's podman argv")
                captured = argv
            plain(0)
            for k in range(1, n + 1):
                if k % 2:
                    e, d, _ = worker_job(k)
                    p = plain(k)
                else:
                    p = plain(k)
                    e, d, _ = worker_job(k)
                wt.append(e)
                dur.append(d)
                pt.append(p)
        finally:
            w.stop()
            b.podman_cleanup(ns)
        run = {"worker_ms": [x * 1000 for x in wt], "plain_ms": [x * 1000 for x in pt],
               "worker_duration_ms": [x * 1000 for x in dur],
               "worker_median_ms": med(wt) * 1000, "plain_median_ms": med(pt) * 1000,
               "duration_median_ms": med(dur) * 1000}
        run["ratio"] = run["worker_median_ms"] / run["plain_median_ms"]
        run["added_ms"] = run["worker_median_ms"] - run["plain_median_ms"]
        runs.append(run)
        print(f"  container rep {rep + 1}: worker {run['worker_median_ms']:.0f} ms, plain "
              f"{run['plain_median_ms']:.0f} ms, ratio {run['ratio']:.3f}", flush=True)
    b.raw["container"] = {"argv": captured, "runs": runs}
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    b.row("container", f"podman job through the worker, push -> result ({n} seq.)", g("worker_median_ms"), "ms")
    b.row("container", "  the same job's duration as the worker records it", g("duration_median_ms"), "ms")
    b.row("container", "plain `podman run` of the same argv", g("plain_median_ms"), "ms")
    rt = g("ratio")
    b.row("container", "ratio of medians worker / plain", rt, "", "< 1.05", med(rt) < 1.05)
    b.row("container", "worker's added time per job", g("added_ms"), "ms")


@register("container")
def main(b, args):
    run_container(b, args.reps)
