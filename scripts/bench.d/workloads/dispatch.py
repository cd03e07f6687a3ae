"""dispatch: 2,000 exec-mode jobs (/bin/true) against the raw spawn ceiling."""
import collections
import time

from harness import TOPLEVEL, BenchError, med, proc_cpu, proc_faults
from workloads import register


def run_dispatch(b, reps, n=2000, conc=2):
    runs = []
    for rep in range(reps):
        c1 = b.ceiling(n, conc)
        c2 = b.ceiling(n, conc, like_worker=True)
        ceil = c1["per_second"]
        ns = b.ns("d")
        ids = [f"d{i:05d}" for i in range(n)]
        b.push_jobs(ns, ids)
        ini = b.ini(ns, worker={"concurrency": conc})
        a = b.snapshot()
        t_start = time.time()
        w = b.worker(ini)
        try:
            b.wait_results(ns, n, [w], timeout=300)
            z = b.snapshot()
            cpu = proc_cpu(w.pid)
            flt = proc_faults(w.pid)
        finally:
            w.stop()
        d = b.delta(a, z)
        first, last = b.timeline(ns, ids)
        res = b.results(ns)
        bad = collections.Counter(r["status"] for r in res if r["status"] != "succeeded")
        if bad or len(res) != n:
            raise BenchError(f"dispatch: {len(res)} results, not succeeded: {dict(bad)}")
        window = last - first
        run = {
            "ceiling_per_s": ceil, "ceiling_like_worker_per_s": c2["per_second"],
            "ceiling_parent_cpu_us": c1["self_us"], "ceiling_child_cpu_us": c1["children_us"],
            "ceiling_like_worker_parent_cpu_us": c2["self_us"],
            "ceiling_like_worker_child_cpu_us": c2["children_us"],
            "per_s_window": n / window, "per_s_wall": n / (last - t_start),
            "window_s": window, "wall_s": last - t_start, "startup_s": first - t_start,
            "toplevel_per_job": d["toplevel"] / n, "commands_per_job": d["total"] / n,
            "per_job_by_command": {k: v / n for k, v in sorted(d["calls"].items())},
            "redis_cpu_s": d["redis_cpu_s"],
            "redis_usec_per_job": sum(v for k, v in d["usec"].items() if k in TOPLEVEL) / n,
            "redis_usec_per_job_by_command": {k: v / n for k, v in sorted(d["usec"].items())},
            "redis_cpu_us_per_job": d["redis_cpu_s"] / n * 1e6,
            "worker_cpu_us_per_job": cpu[0] / n * 1e6 if cpu else None,
            "children_cpu_us_per_job": cpu[1] / n * 1e6 if cpu else None,
            "machine_busy": d["machine_busy"],
            "worker_minflt_per_job": flt[0] / n if flt else None,
            "worker_ctxsw_per_job": flt[1] / n if flt else None,
        }
        run["ratio"] = run["per_s_window"] / ceil
        runs.append(run)
        print(f"  dispatch rep {rep + 1}: {run['per_s_window']:.0f} jobs/s (window), "
              f"{run['per_s_wall']:.0f} from start, ceiling {ceil:.0f}, "
              f"{run['toplevel_per_job']:.2f} requests / {run['commands_per_job']:.1f} commands per job",
              flush=True)
    b.raw["dispatch"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    wr = g("per_s_window")
    b.row("dispatch", f"jobs/s, first taken -> last result ({n} jobs, conc {conc})", wr, "jobs/s",
          ">= 2,500", med(wr) >= 2500)
    b.row("dispatch", "jobs/s, from worker start (as the reference figures)", g("per_s_wall"), "jobs/s",
          "Celery 550-835, BullMQ 600-700, RQ 160-580")
    b.row("dispatch", "posix_spawn ceiling, /bin/true 2 at a time, no queue", g("ceiling_per_s"), "jobs/s")
    b.row("dispatch", "  same, spawned as worker/spawn.c does (pipes, sigdefault...)",
          g("ceiling_like_worker_per_s"), "jobs/s")
    rt = g("ratio")
    b.row("dispatch", "ratio dispatch / ceiling (per rep)", rt, "", ">= 0.60", med(rt) >= 0.6,
          note="issue 14; issue 6 asked 0.80")
    tl = g("toplevel_per_job")
    b.row("dispatch", "Redis requests per job (EVALSHA, BLMOVE, ...)", tl, "", "<= 2", med(tl) <= 2.0)
    b.row("dispatch", "Redis commands per job, incl. inside scripts", g("commands_per_job"), "")
    b.row("dispatch", "Redis time per job in its commands (commandstats usec)", g("redis_usec_per_job"), "us")
    rc, wc = g("redis_cpu_us_per_job"), g("worker_cpu_us_per_job")
    b.row("dispatch", "Redis CPU per job", rc, "us", "<= 75", med(rc) <= 75)
    b.row("dispatch", "worker CPU per job (its own, not the child's)", wc, "us", "<= 75",
          None if None in wc else med(wc) <= 75)
    qo = [x + y for x, y in zip(rc, wc) if x is not None and y is not None]
    b.row("dispatch", "queue overhead per job: worker + Redis CPU", qo, "us", "<= 150", med(qo) <= 150 if qo else None)
    b.row("dispatch", "  the spawner's own CPU per spawn in the ceiling", g("ceiling_like_worker_parent_cpu_us"), "us")
    b.row("dispatch", "child CPU per job (/bin/true, under the worker)", g("children_cpu_us_per_job"), "us")
    b.row("dispatch", "  the same in the ceiling", g("ceiling_like_worker_child_cpu_us"), "us")
    b.row("dispatch", "worker page faults per job", g("worker_minflt_per_job"), "")
    b.row("dispatch", "machine CPU busy during the run (both cores)", [x * 100 for x in g("machine_busy")], "%")


@register("dispatch")
def main(b, args):
    run_dispatch(b, args.reps)
