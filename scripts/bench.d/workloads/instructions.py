"""instructions: the worker's instructions per job under callgrind.

Unlike times on this shared machine, instruction counts repeat within a
fraction of a percent, so they are what the dispatch path is optimised
against.  The worker runs under valgrind --tool=callgrind with
instrumentation off until it is idle in its BLMOVE; then 300 exec-mode
jobs (/bin/true, concurrency 2) go through it.  The same run's Redis
commands per job (INFO commandstats) are reported beside, since they are
just as deterministic.  The top functions by inclusive cost land in
build/bench/callgrind.instructions.txt.
"""
import re
import subprocess
import time

from harness import BUILD, TOPLEVEL, BenchError
from workloads import register


def callgrind_jobs(b, n, conc=2, name="instructions"):
    """(Ir per job, the annotate listing, Redis delta) for n jobs."""
    ns = b.ns("i")
    out = BUILD / f"callgrind.out.{name}"
    ids = [f"i{i:05d}" for i in range(n)]
    with b.callgrind_worker(ns, out, conc) as w:
        a = b.snapshot()
        b.push_jobs(ns, ids)
        b.wait_results(ns, n, [w], timeout=900, poll=0.1)
        z = b.snapshot()
    if not out.exists():
        raise BenchError(f"callgrind wrote no profile:\n{w.log()[-2000:]}")
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99", str(out)],
                          capture_output=True, text=True, timeout=300).stdout
    (BUILD / f"callgrind.{name}.txt").write_text(text)
    total = None
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
    if total is None:
        raise BenchError("callgrind_annotate printed no total")
    return total / n, text, b.delta(a, z)


@register("instructions")
def main(b, args, n=300):
    t0 = time.time()
    ir, text, d = callgrind_jobs(b, n)
    top = [d["calls"].get(k, 0) / n for k in d["calls"] if k in TOPLEVEL]
    b.raw["instructions"] = {"ir_per_job": ir, "jobs": n, "seconds": time.time() - t0,
                             "redis_calls_per_job": {k: v / n for k, v in sorted(d["calls"].items())},
                             "listing": str(BUILD / "callgrind.instructions.txt")}
    print(f"  instructions: {ir:,.0f} Ir per job (worker, callgrind), "
          f"{d['total'] / n:.2f} Redis commands per job", flush=True)
    b.row("instructions", f"worker instructions per job (callgrind Ir, {n} jobs, conc 2)", [ir], "Ir")
    b.row("instructions", "  Redis commands per job in the same run, incl. inside scripts", [d["total"] / n], "")
    b.row("instructions", "  of which requests (EVALSHA, BLMOVE, ...)", [sum(top)], "")
