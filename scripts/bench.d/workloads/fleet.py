"""fleet: 1 to 32 workers on 10,000 jobs; what saturates."""
import collections
import signal
import time

from harness import med, proc_cpu
from tests.harness import nskey
from workloads import register


def fleet_once(b, nworkers, njobs):
    ns = b.ns("w")
    ini = b.ini(ns, worker={"concurrency": 1})
    ws = [b.worker(ini) for _ in range(nworkers)]
    try:
        b.wait_blocked(nworkers, ws, timeout=120)
        cpu0 = {w.pid: proc_cpu(w.pid) for w in ws}
        a = b.snapshot()
        ids = [f"w{i:05d}" for i in range(njobs)]
        t_push = time.time()
        b.push_jobs(ns, ids)
        t_pushed = time.time()
        b.wait_results(ns, njobs, ws, timeout=600, poll=0.05)
        z = b.snapshot()
        cpu1 = {w.pid: proc_cpu(w.pid) for w in ws}
    finally:
        for w in ws:
            w.kill(signal.SIGTERM)
        for w in ws:
            w.stop()
    d = b.delta(a, z)
    first, last = b.timeline(ns, ids)
    res = b.results(ns)
    count = collections.Counter(r["id"] for r in res)
    want = set(ids)
    missing = len(want - set(count))
    dups = sum(1 for k, v in count.items() if v > 1)
    extra = len(set(count) - want)
    attempts = collections.Counter(r["attempt"] for r in res)
    statuses = collections.Counter(r["status"] for r in res)
    left = b.llen(nskey(ns, "queue")) + sum(b.r.llen(k) for k in b.r.keys(nskey(ns, "active", "*")))
    wself = sum(cpu1[p][0] - cpu0[p][0] for p in cpu0 if cpu0[p] and cpu1[p])
    wkids = sum(cpu1[p][1] - cpu0[p][1] for p in cpu0 if cpu0[p] and cpu1[p])
    secs = d["seconds"]
    return {
        "workers": nworkers, "jobs": njobs, "per_s_window": njobs / (last - first),
        "per_s_from_push": njobs / (last - t_push), "push_s": t_pushed - t_push,
        "window_s": last - first,
        "exactly_once": missing == 0 and dups == 0 and extra == 0 and len(res) == njobs,
        "missing": missing, "duplicates": dups, "extra": extra, "results": len(res),
        "attempts": dict(attempts), "statuses": dict(statuses), "left_in_queue_or_active": left,
        "redis_cpu_cores": d["redis_cpu_s"] / secs, "machine_busy": d["machine_busy"],
        "workers_cpu_cores": wself / secs, "children_cpu_cores": wkids / secs,
        "toplevel_per_job": d["toplevel"] / njobs, "commands_per_job": d["total"] / njobs,
    }


def run_fleet(b, reps, sizes, njobs=10000, small_jobs=3000):
    out = {}
    for size in sizes:
        runs = []
        n = njobs if size == max(sizes) else small_jobs
        for rep in range(reps):
            run = fleet_once(b, size, n)
            runs.append(run)
            print(f"  fleet {size} workers rep {rep + 1}: {run['per_s_window']:.0f} jobs/s, exactly once "
                  f"{run['exactly_once']}, Redis {run['redis_cpu_cores'] * 100:.0f}% of a core, machine "
                  f"{run['machine_busy'] * 100:.0f}% busy", flush=True)
        out[size] = runs
    b.raw["fleet"] = {str(k): v for k, v in out.items()}
    for size, runs in out.items():
        g = lambda k: [r[k] for r in runs]  # noqa: E731
        n = runs[0]["jobs"]
        big = size == max(sizes)
        best = max(med([r["per_s_window"] for r in rs]) for rs in out.values())
        b.row("fleet", f"{size} workers x conc 1, {n:,} jobs: jobs/s", g("per_s_window"), "jobs/s",
              ">= 90% of the best fleet" if big else "",
              med(g("per_s_window")) >= 0.9 * best if big else None)
        if big:
            eo = all(g("exactly_once"))
            b.row("fleet", "  every job exactly once (results by id, attempts 1)",
                  [sum(r["results"] - r["duplicates"] for r in runs) / len(runs)], "results", f"{n:,}", eo,
                  note=f"{sum(g('missing'))} missing, {sum(g('duplicates'))} twice, "
                       f"attempts {sorted(set(a for r in runs for a in r['attempts']))}")
        b.row("fleet", "  Redis CPU (share of one core)", [x * 100 for x in g("redis_cpu_cores")], "%")
        b.row("fleet", "  machine CPU busy (both cores)", [x * 100 for x in g("machine_busy")], "%")
        if big:
            b.row("fleet", "  workers' own CPU (cores)", g("workers_cpu_cores"), "cores")
            b.row("fleet", "  their children's CPU (cores)", g("children_cpu_cores"), "cores")
    big = out[max(sizes)]
    rc = med([r["redis_cpu_cores"] for r in big])
    mb = med([r["machine_busy"] for r in big])
    rate = med([r["per_s_window"] for r in big])
    if rc >= 0.85:
        who = f"Redis saturates (its main thread at {rc * 100:.0f}% of a core) at {rate:.0f} jobs/s"
    elif mb >= 0.90:
        who = (f"the CPUs saturate ({mb * 100:.0f}% busy; Redis at {rc * 100:.0f}% of one core) "
               f"at {rate:.0f} jobs/s")
    else:
        who = (f"neither saturates (machine {mb * 100:.0f}% busy, Redis {rc * 100:.0f}% of a core) "
               f"at {rate:.0f} jobs/s: latency-bound")
    b.raw["fleet_saturation"] = who
    b.rows.append({"workload": "fleet", "metric": "saturates: " + who, "unit": "", "median": None, "min": None,
                   "max": None, "values": [], "target": "", "ok": None, "note": ""})


@register("fleet")
def main(b, args):
    run_fleet(b, args.reps, sorted({int(x) for x in args.fleet_sizes.split(",")}))
