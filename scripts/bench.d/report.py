"""The report: the machine's description and the table."""
import datetime
import os
import platform
import re
import subprocess

import redis

from harness import REPO, fmt


def machine():
    def sh(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True, timeout=30).stdout.strip()
        except Exception:
            return ""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    rv = re.search(r"v=(\S+)", sh("redis-server", "--version"))
    rev = sh("git", "-C", str(REPO), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": os.cpu_count(), "cpu": model, "memory_gib": round(mem / 2**30, 1),
        "kernel": platform.release(), "redis": rv.group(1) if rv else "?",
        "podman": sh("podman", "--version").replace("podman version ", ""),
        "python": platform.python_version(), "redis_py": redis.__version__,
        "commit": rev + ("-dirty" if dirty else ""), "load_before": os.getloadavg(),
    }


def table(rows, mach, reps):
    head = (f"debate worker benchmark, {mach['date']}\n"
            f"machine: {mach['nproc']} x {mach['cpu']}, {mach['memory_gib']} GiB, Linux {mach['kernel']}, "
            f"Redis {mach['redis']} (TCP loopback), podman {mach['podman']}, commit {mach['commit']}\n"
            + "".join(f"{k}: {v['path']} sha256 {v['sha256']}, built {v['built']}\n"
                      for k, v in mach.get("binaries", {}).items())
            + f"each figure: median of {reps} runs, spread min-max\n")
    cols = ["workload", "metric", "median", "min-max", "unit", "target", ""]
    lines = []
    for r in rows:
        spread = "" if r["min"] is None or len(r["values"]) < 2 else \
            f"{fmt(r['min'], r['unit'])}-{fmt(r['max'], r['unit'])}"
        verdict = "" if r["ok"] is None else ("ok" if r["ok"] else "MISSED")
        metric = r["metric"] + (f" [{r['note']}]" if r.get("note") else "")
        value = "" if r["median"] is None and not r["values"] else fmt(r["median"], r["unit"])
        lines.append([r["workload"], metric, value, spread, r["unit"], r["target"], verdict])
    w = [max(len(str(x[i])) for x in lines + [cols]) for i in range(len(cols))]
    w[1] = min(w[1], 66)
    out = [head]
    out.append("  ".join(c.ljust(w[i]) if i in (0, 1, 4, 5, 6) else c.rjust(w[i]) for i, c in enumerate(cols)))
    out.append("  ".join("-" * x for x in w))
    prev = None
    for x in lines:
        if prev is not None and x[0] != prev:
            out.append("")
        prev = x[0]
        cells = []
        for i, c in enumerate(x):
            c = str(c)
            cells.append(c.ljust(w[i]) if i in (0, 1, 4, 5, 6) else c.rjust(w[i]))
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)
