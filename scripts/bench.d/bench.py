#!/usr/bin/python3
"""The benchmark suite: scripts/bench (make bench) runs this.

It starts its own redis-server (persistence off, a free 127.0.0.1 port: the
loopback the reference figures were measured on), runs the workloads below
against worker/worker and enqueue/enqueue, prints a table and writes the
same figures as JSON.  Every row is measured --reps times and reported as
median and spread (min-max); every comparison is a ratio of figures taken
in the same run, because this machine is shared and noisy.

Workloads (--only NAME[,NAME...]):
  dispatch   2,000 exec-mode jobs (/bin/true), concurrency 2: jobs/s from the
             first job taken to the last result recorded, and from worker
             start; the raw posix_spawn ceiling (spawn_ceiling.c, same rep)
             and the ratio; Redis commands per job (INFO commandstats), Redis
             and worker CPU per job (the queue's overhead).
  instructions  the worker's instructions per job under callgrind (300
             /bin/true jobs, concurrency 2), with the same run's Redis commands
             per job: the stable figures to optimise against.
  latency    LPUSH -> `started` event and -> first `log` line, one idle
             worker, 200 jobs: p50 and p99.
  container  30 podman jobs (/bin/echo hello in localhost/debate-test) through
             the worker against 30 plain `podman run` with the worker's own
             argv, alternating, sequential: ratio of medians, added ms.
  enqueue    `enqueue submit` (one process per job), a redis-py producer
             pipelining 10,000 jobs, and one MULTI/EXEC per job.
  flood      one job printing 1,000,000 lines: lines/s reaching a SUBSCRIBEr,
             the worker's peak RSS, dropped lines.
  footprint  worker RSS idle and with 8 running jobs; Redis commands an idle
             worker sends (heartbeat_interval 5, over --idle-seconds).
  idle_fleet --idle-fleet N (1,000) idle worker processes for 60 s: Redis CPU
             share and commands per heartbeat per worker (once, not --reps).
  fleet      32 workers (and smaller fleets), 10,000 jobs: throughput, every
             job exactly once, what saturates (Redis CPU vs the machine's).
  profile    (only when asked) the dispatch path of the worker under callgrind
             (Ir, user space), perf's software clock (native, kernel included,
             the worker's own pid) and strace -c (system calls per job); the
             listings land in build/bench/.

The harness is harness.py, each workload a module of workloads/ (registered
in workloads/__init__.py), the table report.py; spawn_ceiling is built by
make (`make bench`).  The worker and enqueue binaries are copied at start,
so a rebuild during the run cannot mix two versions; their sha256 is
printed with the table.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

import workloads
from harness import REPO, Bench, BenchError, Stop, build_helpers
from report import machine, table


def main():
    registry = workloads.load()
    WORKLOADS = [w.name for w in registry.values() if not w.optional]
    OPTIONAL = [w.name for w in registry.values() if w.optional]
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help=f"comma-separated workloads: {', '.join(WORKLOADS + OPTIONAL)} (default: all but profile)")
    ap.add_argument("--profile", action="store_true", help="also run the profile (callgrind, perf, strace)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each row (default 3)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="JSON output path")
    ap.add_argument("--idle-seconds", type=float, default=30, help="footprint's idle window (default 30)")
    ap.add_argument("--idle-fleet", type=int, default=1000, help="idle_fleet's worker processes (default 1,000; "
                    "0 leaves the row out)")
    ap.add_argument("--idle-fleet-seconds", type=float, default=60, help="idle_fleet's window (default 60)")
    ap.add_argument("--fleet-sizes", default="1,2,8,32", help="fleet sizes (default 1,2,8,32; the largest "
                    "runs 10,000 jobs, the others 3,000)")
    ap.add_argument("--worker", default=os.environ.get("WORKER_BIN", str(REPO / "worker" / "worker")),
                    help="worker binary (default worker/worker, or $WORKER_BIN)")
    ap.add_argument("--enqueue", default=os.environ.get("ENQUEUE_BIN", str(REPO / "enqueue" / "enqueue")),
                    help="enqueue binary (default enqueue/enqueue, or $ENQUEUE_BIN)")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, inis) under build/bench")
    args = ap.parse_args()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    if "all" in only:
        only = WORKLOADS + [x for x in only if x in OPTIONAL]
    if args.profile and "profile" not in only:
        only.append("profile")
    bad = [x for x in only if x not in WORKLOADS + OPTIONAL]
    if bad:
        ap.error(f"unknown workload(s): {', '.join(bad)}")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    for exe in (args.worker, args.enqueue):
        if not os.access(exe, os.X_OK):
            sys.exit(f"bench: {exe} is not built (run make)")

    def on_signal(sig, frame):
        raise Stop(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    build_helpers()
    mach = machine()
    b = Bench(args)
    mach["binaries"] = b.binaries
    interrupted = False
    try:
        b.start()
        for name in only:
            print(f"== {name}", flush=True)
            t0 = time.time()
            try:
                registry[name].run(b, args)
            except (BenchError, subprocess.SubprocessError, redis.RedisError, OSError) as e:
                b.errors[name] = str(e)
                b.rows.append({"workload": name, "metric": f"FAILED: {str(e).splitlines()[0][:200]}",
                               "unit": "", "median": None, "min": None, "max": None, "values": [],
                               "target": "", "ok": False, "note": ""})
                print(f"  {name} failed: {e}", flush=True)
            print(f"  ({time.time() - t0:.0f} s)", flush=True)
    except Stop as e:
        interrupted = True
        print(f"bench: interrupted ({e}); cleaning up", file=sys.stderr)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        b.close()
    text = table(b.rows, mach, args.reps)
    print()
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"machine": mach, "reps": args.reps, "workloads": only, "rows": b.rows, "raw": b.raw,
           "errors": b.errors, "interrupted": interrupted, "table": text}
    out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(f"\nJSON: {out}")
    return 1 if (b.errors or interrupted) else 0


if __name__ == "__main__":
    sys.exit(main())
