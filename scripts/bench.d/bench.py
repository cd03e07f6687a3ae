#!/usr/bin/python3
"""The benchmark suite of issue 6: scripts/bench (make bench) runs this.

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
             and the ratio; Redis commands per job (INFO commandstats).
  container  30 podman jobs (/bin/echo hello in localhost/debate-test) through
             the worker against 30 plain `podman run` with the worker's own
             argv, alternating, sequential: ratio of medians, added ms.
  enqueue    `enqueue submit` (one process per job), a redis-py producer
             pipelining 10,000 jobs, and one MULTI/EXEC per job.
  flood      one job printing 1,000,000 lines: lines/s reaching a SUBSCRIBEr,
             the worker's peak RSS, dropped lines.
  footprint  worker RSS idle and with 8 running jobs; Redis commands an idle
             worker sends (heartbeat_interval 5, over --idle-seconds).
  fleet      32 workers (and smaller fleets), 10,000 jobs: throughput, every
             job exactly once, what saturates (Redis CPU vs the machine's).
  profile    (only when asked) the dispatch path of the worker under callgrind
             (Ir, user space), perf's software clock (native, kernel included,
             the worker's own pid) and strace -c (system calls per job); the
             listings land in build/bench/.

The worker and enqueue binaries are copied at start, so a rebuild during
the run cannot mix two versions; their sha256 is printed with the table.
"""
import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "build" / "bench"
sys.path.insert(0, str(REPO / "tests" / "integration"))

import msgpack  # noqa: E402
import redis  # noqa: E402

from workers import CONTAINERS_CONF, TEST_IMAGE, RedisServer, write_ini  # noqa: E402

WORKLOADS = ["dispatch", "container", "enqueue", "flood", "footprint", "fleet"]
OPTIONAL = ["profile"]
MIB = 1024 * 1024

# Commands a client sends itself (never from inside a script): one each is
# one request of the worker's.  Everything else in commandstats ran inside
# a script (or a MULTI) on the worker's behalf.
TOPLEVEL = {"evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro", "blmove", "brpoplpush",
            "blmpop", "blpop", "brpop", "multi", "exec", "discard", "script|load", "script|exists",
            "role", "auth", "select", "hello", "ping", "client|setname", "client|setinfo", "subscribe",
            "sentinel|get-master-addr-by-name"}


class BenchError(Exception):
    pass


class Stop(Exception):
    """SIGTERM/SIGINT: unwind through every finally."""


# ------------------------------------------------------------------ helpers

def proc_status(pid):
    """VmRSS, VmHWM, RssAnon, RssFile, RssShmem of pid, in bytes."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


LIB_GROUPS = {
    "libmicrohttpd and its TLS chain": ("libmicrohttpd", "libgnutls", "libp11-kit", "libnettle", "libhogweed",
                                        "libgmp", "libtasn1", "libidn2", "libunistring", "libffi"),
    "libsystemd and its crypto/compression chain": ("libsystemd", "libgcrypt", "libgpg-error", "liblzma",
                                                    "libzstd", "liblz4", "libcap"),
}


def proc_maps_rss(pid):
    """RSS per mapped file (or [heap], [stack]), in bytes."""
    out = collections.Counter()
    name = None
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                    parts = line.split()
                    name = os.path.basename(parts[5]) if len(parts) > 5 else "[anon]"
                elif line.startswith("Rss:") and name:
                    out[name] += int(line.split()[1]) * 1024
    except OSError:
        pass
    return {k: v for k, v in out.most_common() if v}


def lib_group_rss(maps):
    return {g: sum(v for k, v in maps.items() if k.startswith(libs)) for g, libs in LIB_GROUPS.items()}


def proc_pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """(self CPU s, reaped children's CPU s) of pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return ((int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK)


def proc_faults(pid):
    """(minor page faults, voluntary + involuntary context switches) of pid."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        minflt = int(st[st.rindex(")") + 2:].split()[7])
        cs = 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    cs += int(line.split()[1])
        return minflt, cs
    except OSError:
        return None


def machine_cpu():
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def children_of(pid):
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [x.decode() for x in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def med(xs):
    return statistics.median(xs) if xs else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if unit == "MiB":
        return f"{v:.2f}"
    if v == int(v):
        return f"{int(v):,}"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


class Proc:
    """A worker process we started: stderr to a file, stopped by pid."""

    def __init__(self, bench, argv, env=None, name="worker"):
        self.bench = bench
        self.logpath = bench.tmp / f"{name}-{uuid.uuid4().hex[:8]}.log"
        self._log = open(self.logpath, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        self.pid = self.proc.pid
        bench.procs.append(self)

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        return self.logpath.read_text(errors="replace")

    def check(self):
        if not self.alive():
            raise BenchError(f"{self.logpath.name} exited {self.proc.returncode}:\n{self.log()[-2000:]}")

    def kill(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.alive():
            self.kill(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


# ------------------------------------------------------------------ the bench

class Bench:
    def __init__(self, args):
        self.args = args
        BUILD.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="run-", dir=BUILD))
        # Private copies: a rebuild during the run must not mix two binaries.
        (self.tmp / "bin").mkdir()
        self.worker_bin = str(self.tmp / "bin" / "worker")
        self.enqueue_bin = str(self.tmp / "bin" / "enqueue")
        shutil.copy2(args.worker, self.worker_bin)
        shutil.copy2(args.enqueue, self.enqueue_bin)
        self.binaries = {}
        for name, src, dst in (("worker", args.worker, self.worker_bin), ("enqueue", args.enqueue, self.enqueue_bin)):
            with open(dst, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            mtime = datetime.datetime.fromtimestamp(os.stat(src).st_mtime).astimezone()
            self.binaries[name] = {"path": str(Path(src).resolve()), "sha256": digest,
                                   "built": mtime.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.procs = []
        self.namespaces = []
        self.podman_namespaces = []
        self.own = collections.Counter()    # commands this script sent (to subtract)
        self.rows = []
        self.raw = {}
        self.errors = {}
        self.redis = None
        self.r = None
        self.broot = self.tmp / "builds"
        (self.broot / "p").mkdir(parents=True)
        (self.broot / "o").mkdir(parents=True)

    # -- lifecycle
    def start(self):
        self.redis = RedisServer(self.tmp / "redis").start()
        self.r = self.redis.client()
        self.url = self.redis.url

    def close(self):
        for p in self.procs:
            try:
                p.stop(signal.SIGTERM, timeout=15)
            except Exception:
                pass
        for ns in self.podman_namespaces:
            self.podman_cleanup(ns)
        if self.redis is not None:
            self.redis.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def podman_env(self):
        return dict(os.environ, CONTAINERS_CONF=CONTAINERS_CONF)

    def podman_cleanup(self, ns):
        env = self.podman_env()
        try:
            out = subprocess.run(["podman", "ps", "--all", "--filter", f"label=debate.ns={ns}", "--format",
                                  "{{.Names}}"], capture_output=True, text=True, env=env, timeout=60)
            for name in out.stdout.split():
                subprocess.run(["podman", "rm", "--force", name], capture_output=True, env=env, timeout=60)
        except Exception:
            pass

    # -- results
    def row(self, workload, metric, values, unit="", target="", ok=None, note=""):
        values = [v for v in values if v is not None]
        self.rows.append({
            "workload": workload, "metric": metric, "unit": unit,
            "median": med(values), "min": min(values) if values else None,
            "max": max(values) if values else None, "values": values,
            "target": target, "ok": ok, "note": note,
        })

    # -- Redis
    def ns(self, tag):
        ns = f"b{tag}{uuid.uuid4().hex[:6]}"
        self.namespaces.append(ns)
        return ns

    def info(self, section):
        d = self.r.info(section)
        self.own["info"] += 1
        return d

    def snapshot(self):
        """Commandstats, Redis CPU and our own command count, at one moment."""
        own = collections.Counter(self.own)
        t = time.time()
        cs = self.info("commandstats")
        cpu = self.info("cpu")
        calls = {k[len("cmdstat_"):]: v["calls"] for k, v in cs.items()}
        usec = {k[len("cmdstat_"):]: v["usec"] for k, v in cs.items()}
        return {"t": t, "calls": calls, "usec": usec, "own": own,
                "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "machine": machine_cpu()}

    def delta(self, a, b):
        """The commands others (the workers) sent between two snapshots."""
        own = b["own"] - a["own"]
        # b's commandstats INFO was counted before it ran; its INFO cpu was not
        # part of b's view but a's INFO cpu was: own already counts a's two.
        calls = {}
        for k, v in b["calls"].items():
            d = v - a["calls"].get(k, 0) - own.get(k, 0)
            if d > 0:
                calls[k] = d
        usec = {k: v - a["usec"].get(k, 0) for k, v in b["usec"].items() if k in calls}
        top = sum(v for k, v in calls.items() if k in TOPLEVEL)
        total = sum(calls.values())
        return {"calls": calls, "usec": usec, "toplevel": top, "total": total,
                "redis_cpu_s": b["cpu"] - a["cpu"], "seconds": b["t"] - a["t"],
                "machine_busy": (b["machine"][0] - a["machine"][0]) / max(1, b["machine"][1] - a["machine"][1])}

    def llen(self, key):
        self.own["llen"] += 1
        return self.r.llen(key)

    def blocked_clients(self):
        return self.info("clients")["blocked_clients"]

    def wait_blocked(self, n, procs, timeout=60):
        """Until n clients block (each idle worker's BLMOVE)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.blocked_clients() >= n:
                return
            for p in procs:
                p.check()
            time.sleep(0.02)
        raise BenchError(f"{n} workers did not reach their BLMOVE within {timeout}s")

    def push_jobs(self, ns, ids, chunk=1000, **fields):
        now = time.time()
        for i in range(0, len(ids), chunk):
            p = self.r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                job = {"id": jid, "profile": "p", "output": "o", "source_date_epoch": 1700000000,
                       "enqueued_at": now, **fields}
                p.hset(f"{{{ns}}}:job:{jid}", mapping={"state": "queued", "enqueued_at": now})
                p.lpush(f"{{{ns}}}:queue", msgpack.packb(job))
            p.execute()

    def wait_results(self, ns, n, procs, timeout, poll=0.02):
        key = f"{{{ns}}}:results"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.llen(key) >= n:
                return time.time()
            for p in procs:
                p.check()
            time.sleep(poll)
        raise BenchError(f"only {self.r.llen(key)} of {n} results after {timeout}s")

    def timeline(self, ns, ids):
        """First job taken (the claim's started_at in the job hash) and last
        result recorded (the Redis-clock id of the `finished` stream entry)."""
        first, last = None, None
        for i in range(0, len(ids), 1000):
            p = self.r.pipeline(transaction=False)
            for jid in ids[i:i + 1000]:
                p.hget(f"{{{ns}}}:job:{jid}", "started_at")
                p.xrevrange(f"{{{ns}}}:log:{jid}", "+", "-", count=1)
            out = p.execute()
            for k in range(0, len(out), 2):
                if out[k] is not None:
                    s = float(out[k])
                    first = s if first is None else min(first, s)
                if out[k + 1]:
                    eid, f = out[k + 1][0]
                    if f.get(b"type") == b"finished":
                        ms = int(eid.split(b"-")[0]) / 1000
                        last = ms if last is None else max(last, ms)
        return first, last

    def results(self, ns):
        return [msgpack.unpackb(x) for x in self.r.lrange(f"{{{ns}}}:results", 0, -1)]

    # -- workers
    def ini(self, ns, worker=None, sandbox=None, queue=None):
        sec = {
            "redis": {"url": self.url},
            "queue": {"namespace": ns, **(queue or {})},
            "worker": {"builds_root": str(self.broot), "concurrency": 1, "log_level": "info",
                       **(worker or {})},
            "sandbox": {"runtime": "exec", "command": "/bin/true", **(sandbox or {})},
        }
        return write_ini(self.tmp / f"{ns}-{uuid.uuid4().hex[:4]}.ini", sec)

    def worker(self, ini, args=(), env=None, wrap=()):
        return Proc(self, [*wrap, self.worker_bin, "-c", ini, *args], env=env)

    def ceiling(self, n, k=2, like_worker=False):
        """spawn_ceiling's figures: per_second, self_us and children_us per spawn."""
        exe = BUILD / "spawn_ceiling"
        argv = [str(exe), "-n", str(n), "-c", str(k)] + (["-w"] if like_worker else [])
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
        return json.loads(out.stdout)


def build_helpers():
    src = REPO / "scripts" / "bench.d" / "spawn_ceiling.c"
    exe = BUILD / "spawn_ceiling"
    BUILD.mkdir(parents=True, exist_ok=True)
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-o", str(exe), str(src)],
                       check=True)


# ------------------------------------------------------------------ 1 dispatch

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
            "redis_usec_per_job": sum(d["usec"].values()) / n,
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
    b.row("dispatch", "ratio dispatch / ceiling (per rep)", rt, "", ">= 0.80", med(rt) >= 0.8)
    tl = g("toplevel_per_job")
    b.row("dispatch", "Redis requests per job (EVALSHA, BLMOVE, ...)", tl, "", "<= 2", med(tl) <= 2.0)
    b.row("dispatch", "Redis commands per job, incl. inside scripts", g("commands_per_job"), "")
    b.row("dispatch", "Redis CPU per job", g("redis_cpu_us_per_job"), "us")
    b.row("dispatch", "worker CPU per job (its own, not the child's)", g("worker_cpu_us_per_job"), "us")
    b.row("dispatch", "  the spawner's own CPU per spawn in the ceiling", g("ceiling_like_worker_parent_cpu_us"), "us")
    b.row("dispatch", "child CPU per job (/bin/true, under the worker)", g("children_cpu_us_per_job"), "us")
    b.row("dispatch", "  the same in the ceiling", g("ceiling_like_worker_child_cpu_us"), "us")
    b.row("dispatch", "worker page faults per job", g("worker_minflt_per_job"), "")
    b.row("dispatch", "machine CPU busy during the run (both cores)", [x * 100 for x in g("machine_busy")], "%")


# ------------------------------------------------------------------ 2 container

def plain_argv(argv, ns, k, tmp):
    """The worker's own `podman run` argv with this run's name, cidfile and labels."""
    out = []
    for a in argv:
        if a.startswith("--name="):
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
                got = b.r.blpop(f"{{{ns}}}:result:{jid}", timeout=100)
                t1 = time.perf_counter()
                if got is None:
                    raise BenchError(f"container: no result for {jid}")
                res = msgpack.unpackb(got[1])
                if res["status"] != "succeeded" or "hello" not in res["log_tail"]:
                    raise BenchError(f"container: job {jid}: {res['status']} {res['error']} {res['log_tail']}")
                return t1 - t0, res["duration"], argv

            def plain(k):
                argv = plain_argv(captured, ns, k, b.tmp)
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


# ------------------------------------------------------------------ 3 enqueue

def run_enqueue(b, reps, n_cli=200, n_pipe=10000, n_tx=2000):
    runs = []
    for rep in range(reps):
        run = {}
        ns = b.ns("e")
        ini = b.ini(ns)
        q = f"{{{ns}}}:queue"
        # enqueue submit, one process per job.
        t0 = time.perf_counter()
        for i in range(n_cli):
            p = subprocess.run([b.enqueue_bin, "-c", ini, "submit", "--profile", "p", "--output", "o",
                                "--id", f"e{i:05d}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=60)
            if p.returncode != 0:
                raise BenchError(f"enqueue submit exited {p.returncode}: {p.stderr.decode()[-500:]}")
        run["cli_per_s"] = n_cli / (time.perf_counter() - t0)
        if b.r.llen(q) != n_cli:
            raise BenchError(f"enqueue: {b.r.llen(q)} jobs queued, not {n_cli}")
        # What one process per job costs from here at all.
        t0 = time.perf_counter()
        for i in range(n_cli):
            subprocess.run(["/bin/true"])
        run["spawn_floor_per_s"] = n_cli / (time.perf_counter() - t0)
        # redis-py, everything in one pipeline (msgpack packing included).
        ns2 = b.ns("e")
        t0 = time.perf_counter()
        now = time.time()
        p = b.r.pipeline(transaction=False)
        for i in range(n_pipe):
            jid = f"p{i:05d}"
            p.hset(f"{{{ns2}}}:job:{jid}", mapping={"state": "queued", "enqueued_at": now})
            p.lpush(f"{{{ns2}}}:queue", msgpack.packb({"id": jid, "profile": "p", "output": "o",
                                                        "source_date_epoch": 1700000000, "enqueued_at": now}))
        p.execute()
        run["pipeline_per_s"] = n_pipe / (time.perf_counter() - t0)
        if b.r.llen(f"{{{ns2}}}:queue") != n_pipe:
            raise BenchError("enqueue: pipelined jobs missing")
        # redis-py, one MULTI/EXEC per job (PROTOCOL.md's producer).
        ns3 = b.ns("e")
        t0 = time.perf_counter()
        for i in range(n_tx):
            jid = f"x{i:05d}"
            now = time.time()
            with b.r.pipeline() as p:
                p.hset(f"{{{ns3}}}:job:{jid}", mapping={"state": "queued", "enqueued_at": now})
                p.lpush(f"{{{ns3}}}:queue", msgpack.packb({"id": jid, "profile": "p", "output": "o",
                                                            "source_date_epoch": 1700000000, "enqueued_at": now}))
                p.execute()
        run["tx_per_s"] = n_tx / (time.perf_counter() - t0)
        runs.append(run)
        print(f"  enqueue rep {rep + 1}: cli {run['cli_per_s']:.0f}/s (process floor "
              f"{run['spawn_floor_per_s']:.0f}/s), pipeline {run['pipeline_per_s']:.0f}/s, "
              f"multi/exec {run['tx_per_s']:.0f}/s", flush=True)
        b.r.delete(q, f"{{{ns2}}}:queue", f"{{{ns3}}}:queue")
    b.raw["enqueue"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    b.row("enqueue", f"`enqueue submit`, one process per job ({n_cli} seq.)", g("cli_per_s"), "jobs/s",
          note="process-bound")
    b.row("enqueue", "  floor: subprocess.run(/bin/true) from the same Python", g("spawn_floor_per_s"), "runs/s")
    b.row("enqueue", f"redis-py, one pipeline of {n_pipe:,} jobs", g("pipeline_per_s"), "jobs/s")
    b.row("enqueue", f"redis-py, one MULTI/EXEC per job ({n_tx:,})", g("tx_per_s"), "jobs/s")


# ------------------------------------------------------------------ 4 flood

class Subscriber(threading.Thread):
    """Counts the log lines of one job as a dashboard would see them."""

    def __init__(self, b, ns, jid):
        super().__init__(daemon=True)
        self.client = redis.Redis(host="127.0.0.1", port=b.redis.port, socket_timeout=300)
        self.ps = self.client.pubsub()
        self.ps.subscribe(f"{{{ns}}}:progress:{jid}")
        # Wait for the confirmation: no event may be published before it.
        deadline = time.time() + 30
        while True:
            m = self.ps.get_message(timeout=1)
            if m is not None and m["type"] == "subscribe":
                break
            if time.time() > deadline:
                raise BenchError("flood: SUBSCRIBE was not confirmed")
        self.lines = self.batches = self.dropped = 0
        self.t_started = self.t_first = self.t_last = self.t_finished = None
        self.error = None
        self.done = threading.Event()

    def run(self):
        try:
            deadline = time.time() + 600
            while time.time() < deadline:
                m = self.ps.get_message(timeout=1.0)
                if m is None or m["type"] != "message":
                    continue
                now = time.perf_counter()
                ev = msgpack.unpackb(m["data"])
                t = ev.get("type")
                if t == "log":
                    self.lines += len(ev["lines"])
                    self.batches += 1
                    self.dropped += ev.get("dropped", 0)
                    if self.t_first is None:
                        self.t_first = now
                    self.t_last = now
                elif t == "started":
                    self.t_started = now
                elif t == "finished":
                    self.t_finished = now
                    break
        except Exception as e:  # reported by the caller
            self.error = e
        finally:
            self.done.set()
            try:
                self.ps.close()
                self.client.close()
            except Exception:
                pass


def run_flood(b, reps, n=1_000_000):
    runs = []
    for rep in range(reps):
        ns = b.ns("f")
        ini = b.ini(ns, worker={"log_max_lines": 2_000_000},
                    sandbox={"command": f"seq {n}"})
        w = b.worker(ini)
        try:
            b.wait_blocked(1, [w])
            rss_idle = proc_status(w.pid).get("VmRSS")
            jid = "flood"
            sub = Subscriber(b, ns, jid)
            sub.start()
            a = b.snapshot()
            cpu0 = proc_cpu(w.pid)
            t_push = time.perf_counter()
            b.push_jobs(ns, [jid])
            peak = 0
            while not sub.done.is_set():
                peak = max(peak, proc_status(w.pid).get("VmRSS", 0))
                w.check()
                if time.perf_counter() - t_push > 600:
                    raise BenchError("flood: no finished event within 600 s")
                time.sleep(0.005)
            st = proc_status(w.pid)
            cpu1 = proc_cpu(w.pid)
            z = b.snapshot()
            if sub.error:
                raise BenchError(f"flood: subscriber failed: {sub.error!r}")
            got = b.r.blpop(f"{{{ns}}}:result:{jid}", timeout=60)
        finally:
            w.stop()
        res = msgpack.unpackb(got[1])
        d = b.delta(a, z)
        run = {
            "lines_received": sub.lines, "batches": sub.batches,
            "lines_per_s_e2e": sub.lines / (sub.t_last - t_push),
            "lines_per_s_worker": n / res["duration"] if res["duration"] > 0 else None,
            "seconds_e2e": sub.t_last - t_push, "duration_s": res["duration"],
            "peak_rss_sampled": peak, "vmhwm": st.get("VmHWM"), "rss_idle": rss_idle,
            "dropped_lines": res["dropped_lines"], "dropped_reported": sub.dropped,
            "missing_at_subscriber": n - sub.lines, "status": res["status"],
            "worker_cpu_s": cpu1[0] - cpu0[0], "redis_cpu_s": d["redis_cpu_s"],
            "redis_commands": d["calls"],
        }
        runs.append(run)
        print(f"  flood rep {rep + 1}: {run['lines_per_s_e2e']:.0f} lines/s e2e, {sub.lines} received, "
              f"peak RSS {run['vmhwm'] / MIB:.1f} MiB, dropped {run['dropped_lines']}", flush=True)
    b.raw["flood"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    e2e = g("lines_per_s_e2e")
    b.row("flood", f"lines/s reaching a SUBSCRIBEr (push -> last line, {n:,})", e2e, "lines/s",
          ">= 200,000", med(e2e) >= 200_000)
    b.row("flood", "  lines/s inside the worker (1M / the job's duration)", g("lines_per_s_worker"), "lines/s")
    pk = [r["vmhwm"] / MIB for r in runs]
    b.row("flood", "worker peak RSS (VmHWM)", pk, "MiB", "< 32", max(pk) < 32)
    dr = [r["dropped_lines"] + r["missing_at_subscriber"] for r in runs]
    b.row("flood", "lines dropped or missing (cap 2,000,000)", dr, "lines", "0", max(dr) == 0)
    b.row("flood", "worker CPU for the flood", g("worker_cpu_s"), "s")
    b.row("flood", "Redis CPU for the flood", g("redis_cpu_s"), "s")


# ------------------------------------------------------------------ 5 footprint

def run_footprint(b, reps, running=8, idle_s=30, hb=5):
    runs = []
    for rep in range(reps):
        ns = b.ns("m")
        ini = b.ini(ns, worker={"concurrency": running, "heartbeat_interval": hb, "heartbeat_ttl": 3 * hb},
                    sandbox={"command": "sleep 5"})
        w = b.worker(ini)
        try:
            b.wait_blocked(1, [w])
            time.sleep(1)
            a = b.snapshot()
            samples = []
            t_end = time.time() + idle_s
            while time.time() < t_end:
                samples.append(proc_status(w.pid))
                w.check()
                time.sleep(1)
            z = b.snapshot()
            idle = proc_status(w.pid)
            pss_idle = proc_pss(w.pid)
            maps_idle = proc_maps_rss(w.pid)
            ids = [f"m{i}" for i in range(running)]
            b.push_jobs(ns, ids)
            deadline = time.time() + 30
            while True:
                p = b.r.pipeline(transaction=False)
                for jid in ids:
                    p.hget(f"{{{ns}}}:job:{jid}", "state")
                if all(s == b"running" for s in p.execute()):
                    break
                if time.time() > deadline:
                    raise BenchError(f"footprint: {running} jobs did not all start")
                time.sleep(0.02)
            time.sleep(0.5)
            busy = [proc_status(w.pid) for _ in range(5) if time.sleep(0.1) is None]
            pss_busy = proc_pss(w.pid)
        finally:
            w.stop(signal.SIGINT)
        d = b.delta(a, z)
        rss_idle = max(s["VmRSS"] for s in samples + [idle])
        rss_busy = max(s["VmRSS"] for s in busy)
        run = {
            "rss_idle": rss_idle, "rss_anon_idle": idle.get("RssAnon"), "rss_file_idle": idle.get("RssFile"),
            "pss_idle": pss_idle, "rss_busy": rss_busy, "pss_busy": pss_busy,
            "rss_anon_busy": max(s.get("RssAnon", 0) for s in busy),
            "per_job_kib": (rss_busy - rss_idle) / running / 1024,
            "idle_seconds": d["seconds"], "idle_calls": d["calls"],
            "idle_cmds_per_s": d["total"] / d["seconds"],
            "idle_requests_per_s": d["toplevel"] / d["seconds"],
            "idle_requests_per_beat_excl_fetch":
                (d["toplevel"] - d["calls"].get("blmove", 0)) / (d["seconds"] / hb),
            "idle_blmove": d["calls"].get("blmove", 0),
            "rss_by_mapping_idle": maps_idle, "rss_by_lib_group_idle": lib_group_rss(maps_idle),
        }
        runs.append(run)
        print(f"  footprint rep {rep + 1}: idle RSS {rss_idle / MIB:.2f} MiB (anon "
              f"{(idle.get('RssAnon') or 0) / MIB:.2f}), {running} running {rss_busy / MIB:.2f} MiB, "
              f"idle {run['idle_requests_per_s']:.2f} requests/s ({run['idle_cmds_per_s']:.2f} commands/s)",
              flush=True)
    b.raw["footprint"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    ri = [x / MIB for x in g("rss_idle")]
    b.row("footprint", "worker RSS idle (VmRSS)", ri, "MiB", "< 4", med(ri) < 4)
    b.row("footprint", "  of which anonymous (RssAnon)", [x / MIB for x in g("rss_anon_idle")], "MiB")
    b.row("footprint", "  of which file-backed, shared libs (RssFile)", [x / MIB for x in g("rss_file_idle")], "MiB")
    for grp in LIB_GROUPS:
        v = [r["rss_by_lib_group_idle"][grp] / MIB for r in runs]
        if any(v):
            b.row("footprint", f"  of which {grp}", v, "MiB")
    b.row("footprint", "  PSS idle (shared pages split among users)", [x / MIB for x in g("pss_idle") if x], "MiB")
    b.row("footprint", f"worker RSS with {running} running jobs (exec sleep 5)",
          [x / MIB for x in g("rss_busy")], "MiB")
    b.row("footprint", "  added per running job", g("per_job_kib"), "KiB")
    b.row("footprint", f"idle: Redis requests per heartbeat ({hb} s) besides BLMOVE",
          g("idle_requests_per_beat_excl_fetch"), "", "<= 1", med(g("idle_requests_per_beat_excl_fetch")) <= 1.0)
    b.row("footprint", "idle: Redis commands/s incl. inside the beat script", g("idle_cmds_per_s"), "cmd/s")
    b.row("footprint", f"idle: BLMOVE re-issued in {idle_s} s (30 s block)", g("idle_blmove"), "")


# ------------------------------------------------------------------ 6 fleet

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
    left = b.llen(f"{{{ns}}}:queue") + sum(b.r.llen(k) for k in b.r.keys(f"{{{ns}}}:active:*"))
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


# ------------------------------------------------------------------ profile

def run_profile(b, reps, n=500):
    if shutil.which("valgrind") is None:
        raise BenchError("valgrind is not installed")
    ns = b.ns("v")
    ini = b.ini(ns, worker={"concurrency": 2})
    out = BUILD / "callgrind.out.dispatch"
    if out.exists():
        out.unlink()
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no",
            "--instr-atstart=no"]
    w = b.worker(ini, wrap=wrap)
    ids = [f"v{i:05d}" for i in range(n)]
    try:
        b.wait_blocked(1, [w], timeout=120)
        subprocess.run(["callgrind_control", "-i", "on", str(w.pid)], check=True, capture_output=True,
                       timeout=60)
        t0 = time.time()
        b.push_jobs(ns, ids)
        b.wait_results(ns, n, [w], timeout=900, poll=0.1)
        took = time.time() - t0
        subprocess.run(["callgrind_control", "-i", "off", str(w.pid)], capture_output=True, timeout=60)
    finally:
        w.stop(timeout=120)
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


def perf_dispatch(b, n):
    """Where the worker's own CPU goes, natively (perf's software clock: this
    VM has no hardware counters, so `perf stat -e instructions` does not work)."""
    if shutil.which("perf") is None:
        return None
    ns = b.ns("q")
    ini = b.ini(ns, worker={"concurrency": 2})
    w = b.worker(ini)
    data = BUILD / "perf.dispatch.data"
    pr = None
    try:
        b.wait_blocked(1, [w])
        pr = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "4999", "--call-graph", "dwarf,16384",
                               "-o", str(data), "-p", str(w.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        b.push_jobs(ns, [f"q{i:05d}" for i in range(n)])
        b.wait_results(ns, n, [w], timeout=600, poll=0.1)
    finally:
        if pr is not None:
            pr.send_signal(signal.SIGINT)
            pr.wait(timeout=120)
        w.stop()
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
            stack = [] if len(f) >= 2 and f[1] == str(w.pid) else None
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
    ns = b.ns("s")
    ini = b.ini(ns, worker={"concurrency": 2})
    w = b.worker(ini)
    out = BUILD / "strace.dispatch.txt"
    st = None
    try:
        b.wait_blocked(1, [w])
        st = subprocess.Popen(["strace", "-c", "-o", str(out), "-p", str(w.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        b.push_jobs(ns, [f"s{i:05d}" for i in range(n)])
        b.wait_results(ns, n, [w], timeout=600, poll=0.1)
    finally:
        if st is not None:
            st.send_signal(signal.SIGINT)
            st.wait(timeout=60)
        w.stop()
    calls = {}
    for line in out.read_text().splitlines():
        f = line.split()
        # % time, seconds, usecs/call, calls, [errors], syscall
        if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3])
    return calls


# ------------------------------------------------------------------ report

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


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(WORKLOADS),
                    help=f"comma-separated workloads: {', '.join(WORKLOADS + OPTIONAL)} (default: all but profile)")
    ap.add_argument("--profile", action="store_true", help="also run the profile (callgrind, perf, strace)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each row (default 3)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"), help="JSON output path")
    ap.add_argument("--idle-seconds", type=float, default=30, help="footprint's idle window (default 30)")
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
    runners = {"dispatch": lambda: run_dispatch(b, args.reps),
               "container": lambda: run_container(b, args.reps),
               "enqueue": lambda: run_enqueue(b, args.reps),
               "flood": lambda: run_flood(b, args.reps),
               "footprint": lambda: run_footprint(b, args.reps, idle_s=args.idle_seconds),
               "fleet": lambda: run_fleet(b, args.reps, sorted({int(x) for x in args.fleet_sizes.split(",")})),
               "profile": lambda: run_profile(b, args.reps)}
    interrupted = False
    try:
        b.start()
        for name in only:
            print(f"== {name}", flush=True)
            t0 = time.time()
            try:
                runners[name]()
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
