"""profile (only when asked): callgrind, perf and strace on the dispatch path."""
import collections
import re
import shutil
import signal
import subprocess
import time

from harness import BUILD, BenchError
from workloads import register


def run_profile(b, reps, n=500):
    ns = b.ns("v")
    out = BUILD / "callgrind.out.dispatch"
    ids = [f"v{i:05d}" for i in range(n)]
    with b.callgrind_worker(ns, out, 2) as w:
        t0 = time.time()
        b.push_jobs(ns, ids)
        b.wait_results(ns, n, [w], timeout=900, poll=0.1)
        took = time.time() - t0
    if not out.exists():
        raise BenchError(f"callgrind wrote no profile:\n{w.log()[-2000:]}")
    prof = {"file": str(out), "jobs": n, "seconds_under_valgrind": took}
    for mode in ("inclusive", "exclusive"):
        args = ["callgrind_annotate", f"--inclusive={'yes' if mode == 'inclusive' else 'no'}",
                "--threshold=99.9", str(out)]
        text = subprocess.run(args, capture_output=True, text=True, timeout=300).stdout
        (BUILD / f"callgrind.{mode}.txt").write_text(text)
        rows = []
        total = None
        for line in text.splitlines():
            m = re.match(r"\s*([\d,]+) \(\s*([\d.]+)%\)\s+(.*?)\s*$", line)
            if m:
                rows.append({"ir": int(m.group(1).replace(",", "")), "pct": float(m.group(2)),
                             "fn": m.group(3)})
            m2 = re.match(r"\s*([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", line)
            if m2:
                total = int(m2.group(1).replace(",", ""))
        prof[mode] = rows[:40]
        if total:
            prof["total_ir"] = total
            prof["ir_per_job"] = total / n
    prof["syscalls"] = strace_dispatch(b, n)
    prof["perf"] = perf_dispatch(b, 3 * n)
    b.raw["profile"] = prof
    b.row("profile", f"worker instructions per job under callgrind ({n} jobs)", [prof.get("ir_per_job")], "Ir")
    if prof["syscalls"]:
        b.row("profile", "worker system calls per job (strace -c, main thread)",
              [sum(prof["syscalls"].values()) / n], "")
    print("  profile: top functions by inclusive cost (callgrind, Ir):")
    for r in prof["inclusive"][:25]:
        print(f"    {r['pct']:5.1f}%  {r['ir']:>14,}  {r['fn']}")
    print("  by exclusive cost:")
    for r in prof["exclusive"][:20]:
        print(f"    {r['pct']:5.1f}%  {r['ir']:>14,}  {r['fn']}")
    if prof["perf"]:
        print(f"  perf (cpu-clock, native, kernel included; % of the worker's own CPU, {3 * n} jobs), inclusive:")
        for r in prof["perf"]["inclusive"][:30]:
            print(f"    {r['pct']:5.1f}%  {r['fn']}")
        print("  perf, exclusive (self):")
        for r in prof["perf"]["self"][:20]:
            print(f"    {r['pct']:5.1f}%  {r['fn']}")
    if prof["syscalls"]:
        print("  system calls per job (strace -c on the worker, its own thread only):")
        for k, v in sorted(prof["syscalls"].items(), key=lambda x: -x[1])[:20]:
            print(f"    {v / n:6.2f}  {k}")
    print(f"  full listings: {BUILD}/callgrind.inclusive.txt, callgrind.exclusive.txt; profile {out}")


def attached_jobs(b, tag, n, tool, settle, stop_timeout):
    """n exec jobs through one idle worker (concurrency 2) with the command
    tool(pid) attached to it from settle seconds before the first job to
    after the last result; SIGINT then ends the tool.  Returns the worker's pid."""
    ns = b.ns(tag)
    ini = b.ini(ns, worker={"concurrency": 2})
    w = b.worker(ini)
    pr = None
    try:
        b.wait_blocked(1, [w])
        pr = subprocess.Popen(tool(w.pid), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(settle)
        b.push_jobs(ns, [f"{tag}{i:05d}" for i in range(n)])
        b.wait_results(ns, n, [w], timeout=600, poll=0.1)
    finally:
        if pr is not None:
            pr.send_signal(signal.SIGINT)
            pr.wait(timeout=stop_timeout)
        w.stop()
    return w.pid


def perf_dispatch(b, n):
    """Where the worker's own CPU goes, natively (perf's software clock: this
    VM has no hardware counters, so `perf stat -e instructions` does not work)."""
    if shutil.which("perf") is None:
        return None
    data = BUILD / "perf.dispatch.data"
    pid = attached_jobs(b, "q", n, lambda p: ["perf", "record", "-e", "cpu-clock", "-F", "4999", "--call-graph",
                                              "dwarf,16384", "-o", str(data), "-p", str(p)], 1, 120)
    # Count from the raw samples of the worker's own pid (not its vfork
    # children before their exec): inclusive = samples whose stack holds the
    # function, self = samples whose first frame is it.
    text = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,ip,sym"],
                          capture_output=True, text=True, timeout=600).stdout
    incl, own = collections.Counter(), collections.Counter()
    total = 0
    stack = None

    def flush(st):
        nonlocal total
        if st is None:
            return
        total += 1
        if st:
            own[st[0]] += 1
        for fn in set(st):
            incl[fn] += 1

    for line in text.splitlines():
        if line and not line[0].isspace():
            flush(stack)
            f = line.split()
            stack = [] if len(f) >= 2 and f[1] == str(pid) else None
        elif stack is not None:
            f = line.split(None, 1)
            if len(f) == 2:
                kernel = f[0].startswith("ffffffff")
                stack.append(("[k] " if kernel else "[.] ") + f[1].strip())
    flush(stack)
    if not total:
        return None
    skip = re.compile(r"__libc_start|_start$|\] main$|ev_run$|entry_SYSCALL|do_syscall_64|ev_invoke_pending|"
                      r"\[unknown\]|x64_sys_call")
    out = {"samples": total,
           "inclusive": [{"pct": 100 * v / total, "fn": k} for k, v in incl.most_common(120)
                         if not skip.search(k)][:60],
           "self": [{"pct": 100 * v / total, "fn": k} for k, v in own.most_common(60)]}
    (BUILD / "perf.worker.txt").write_text(
        "inclusive\n" + "".join(f"{r['pct']:6.2f}%  {r['fn']}\n" for r in out["inclusive"]) +
        "\nself\n" + "".join(f"{r['pct']:6.2f}%  {r['fn']}\n" for r in out["self"]))
    return out if out.get("self") else None


def strace_dispatch(b, n):
    """System calls the worker makes per job (its own thread; not the children's)."""
    if shutil.which("strace") is None:
        return None
    out = BUILD / "strace.dispatch.txt"
    attached_jobs(b, "s", n, lambda pid: ["strace", "-c", "-o", str(out), "-p", str(pid)], 0.5, 60)
    calls = {}
    for line in out.read_text().splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3])
    return calls


@register("profile", optional=True)
def main(b, args):
    run_profile(b, args.reps)
