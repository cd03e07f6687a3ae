"""The bench harness: process, Redis and /proc helpers, Proc (a process we
started, stopped by pid) and Bench (the run: its redis-server, namespaces,
rows, snapshots of INFO commandstats).  Workloads live in workloads/, one
module each; report.py prints the table."""
import argparse
import collections
import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Counter, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import msgpack

from tests.harness import (EXEC_SANDBOX, REPO, TEST_IMAGE, Process, RedisServer, ini_sections, nskey, podman_env,
                           remove_containers, write_ini)

BUILD = REPO / "build" / "bench"

__all__ = ["REPO", "TEST_IMAGE"]  # re-exported for the workloads

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

def proc_status(pid: int) -> Dict[str, int]:
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


def proc_maps_rss(pid: int) -> Dict[str, int]:
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


def lib_group_rss(maps: Mapping[str, int]) -> Dict[str, int]:
    return {g: sum(v for k, v in maps.items() if k.startswith(libs)) for g, libs in LIB_GROUPS.items()}


def proc_pss(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> Optional[Tuple[float, float]]:
    """(self CPU s, reaped children's CPU s) of pid, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    f = s[s.rindex(")") + 2:].split()
    return ((int(f[11]) + int(f[12])) / CLK_TCK, (int(f[13]) + int(f[14])) / CLK_TCK)


def proc_faults(pid: int) -> Optional[Tuple[int, int]]:
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


def machine_cpu() -> Tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    total = sum(v[:8])
    return total - idle, total


def children_of(pid: int) -> List[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return out


def cmdline(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [x.decode() for x in f.read().split(b"\0")[:-1]]
    except OSError:
        return None


def med(xs: Sequence[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def fmt(v: Optional[float], unit: str = "") -> str:
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


class Proc(Process):
    """A worker process we started (the harness's Process, started at once
    and stopped by Bench.close): stderr to a file in the run directory."""

    def __init__(self, bench: "Bench", argv: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 name: str = "worker") -> None:
        super().__init__(argv, bench.tmp / f"{name}-{uuid.uuid4().hex[:8]}.log", env)
        self.bench = bench
        self.start()
        bench.procs.append(self)

    def check(self) -> None:
        """BenchError with the log's tail if it has exited."""
        if not self.alive():
            assert self.proc is not None
            raise BenchError(f"{self.logpath.name} exited {self.proc.returncode}:\n{self.log()[-2000:]}")

    def kill(self, sig: int) -> None:
        self.signal(sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> Optional[int]:  # type: ignore[override]
        return super().stop(timeout, sig)


# ------------------------------------------------------------------ the bench

class Bench:
    """One run: its directory, binaries, redis-server, processes, rows and raw figures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        BUILD.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="run-", dir=BUILD))
        # Private copies: a rebuild during the run must not mix two binaries.
        (self.tmp / "bin").mkdir()
        self.worker_bin = str(self.tmp / "bin" / "worker")
        self.enqueue_bin = str(self.tmp / "bin" / "enqueue")
        shutil.copy2(args.worker, self.worker_bin)
        shutil.copy2(args.enqueue, self.enqueue_bin)
        self.binaries: Dict[str, Dict[str, str]] = {}
        for name, src, dst in (("worker", args.worker, self.worker_bin), ("enqueue", args.enqueue, self.enqueue_bin)):
            with open(dst, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:12]
            mtime = datetime.datetime.fromtimestamp(os.stat(src).st_mtime).astimezone()
            self.binaries[name] = {"path": str(Path(src).resolve()), "sha256": digest,
                                   "built": mtime.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.procs: List[Proc] = []
        self.namespaces: List[str] = []
        self.podman_namespaces: List[str] = []
        self.own: Counter[str] = collections.Counter()    # commands this script sent (to subtract)
        self.rows: List[Dict[str, Any]] = []
        self.raw: Dict[str, Any] = {}
        self.errors: Dict[str, str] = {}
        self.redis: Optional[RedisServer] = None
        self.r: Any = None    # redis.Redis once started
        self.url = ""
        self.broot = self.tmp / "builds"
        (self.broot / "p").mkdir(parents=True)
        (self.broot / "o").mkdir(parents=True)

    # -- lifecycle
    def start(self) -> None:
        self.redis = RedisServer(self.tmp / "redis").start()
        self.r = self.redis.client()
        self.url = self.redis.url

    def close(self) -> None:
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

    def podman_env(self) -> Dict[str, str]:
        return podman_env()

    def podman_cleanup(self, ns: str) -> None:
        try:
            remove_containers(["podman"], f"debate.ns={ns}", self.podman_env(), timeout=60)
        except Exception:
            pass

    # -- results
    def row(self, workload: str, metric: str, values: Iterable[Optional[float]], unit: str = "", target: str = "",
            ok: Optional[bool] = None, note: str = "") -> None:
        values = [v for v in values if v is not None]
        self.rows.append({
            "workload": workload, "metric": metric, "unit": unit,
            "median": med(values), "min": min(values) if values else None,
            "max": max(values) if values else None, "values": values,
            "target": target, "ok": ok, "note": note,
        })

    # -- Redis
    def ns(self, tag: str) -> str:
        ns = f"b{tag}{uuid.uuid4().hex[:6]}"
        self.namespaces.append(ns)
        return ns

    def info(self, section: str) -> Dict[str, Any]:
        d = self.r.info(section)
        self.own["info"] += 1
        return d

    def snapshot(self) -> Dict[str, Any]:
        """Commandstats, Redis CPU and our own command count, at one moment."""
        own = collections.Counter(self.own)
        t = time.time()
        cs = self.info("commandstats")
        cpu = self.info("cpu")
        calls = {k[len("cmdstat_"):]: v["calls"] for k, v in cs.items()}
        usec = {k[len("cmdstat_"):]: v["usec"] for k, v in cs.items()}
        return {"t": t, "calls": calls, "usec": usec, "own": own,
                "cpu": cpu["used_cpu_user"] + cpu["used_cpu_sys"], "machine": machine_cpu()}

    def delta(self, a: Dict[str, Any], b: Dict[str, Any]) -> Dict[str, Any]:
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

    def llen(self, key: str) -> int:
        self.own["llen"] += 1
        return self.r.llen(key)

    def blocked_clients(self) -> int:
        return self.info("clients")["blocked_clients"]

    def wait_blocked(self, n: int, procs: Sequence[Proc], timeout: float = 60) -> None:
        """Until n clients block (each idle worker's BLMOVE)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.blocked_clients() >= n:
                return
            for p in procs:
                p.check()
            time.sleep(0.02)
        raise BenchError(f"{n} workers did not reach their BLMOVE within {timeout}s")

    def push_jobs(self, ns: str, ids: Sequence[str], chunk: int = 1000, **fields: Any) -> None:
        now = time.time()
        for i in range(0, len(ids), chunk):
            p = self.r.pipeline(transaction=False)
            for jid in ids[i:i + chunk]:
                job = {"id": jid, "profile": "p", "output": f"o/{jid}", "source_date_epoch": 1700000000,
                       "enqueued_at": now, **fields}
                p.hset(nskey(ns, "job", jid), mapping={"state": "queued", "enqueued_at": now})
                p.lpush(nskey(ns, "queue"), msgpack.packb(job))
            p.execute()

    def wait_results(self, ns: str, n: int, procs: Sequence[Proc], timeout: float, poll: float = 0.02) -> float:
        key = nskey(ns, "results")
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.llen(key) >= n:
                return time.time()
            for p in procs:
                p.check()
            time.sleep(poll)
        raise BenchError(f"only {self.r.llen(key)} of {n} results after {timeout}s")

    def timeline(self, ns: str, ids: Sequence[str]) -> Tuple[Optional[float], Optional[float]]:
        """First job taken (the claim's started_at in the job hash) and last
        result recorded (the latest finished_at among the results: the
        worker's clock, this host's)."""
        first = None
        for i in range(0, len(ids), 1000):
            p = self.r.pipeline(transaction=False)
            for jid in ids[i:i + 1000]:
                p.hget(nskey(ns, "job", jid), "started_at")
            for s in p.execute():
                if s is not None:
                    first = float(s) if first is None else min(first, float(s))
        fins = [r["finished_at"] for r in self.results(ns)]
        return first, max(fins) if fins else None

    def results(self, ns: str) -> List[Dict[str, Any]]:
        return [msgpack.unpackb(x) for x in self.r.lrange(nskey(ns, "results"), 0, -1)]

    # -- workers
    def ini(self, ns: str, worker: Optional[Mapping[str, Any]] = None, sandbox: Optional[Mapping[str, Any]] = None,
            queue: Optional[Mapping[str, Any]] = None) -> str:
        sec = ini_sections(self.url, ns, self.broot, queue=queue,
                           worker={"concurrency": 1, "log_level": "info", **(worker or {})},
                           sandbox={**EXEC_SANDBOX, **(sandbox or {})})
        return write_ini(self.tmp / f"{ns}-{uuid.uuid4().hex[:4]}.ini", sec)

    def worker(self, ini: str, args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None,
               wrap: Sequence[str] = ()) -> Proc:
        return Proc(self, [*wrap, self.worker_bin, "-c", ini, *args], env=env)

    @contextlib.contextmanager
    def callgrind_worker(self, ns: str, out: Path, conc: int) -> Iterator[Proc]:
        """A worker of ns under valgrind --tool=callgrind writing out, with
        instrumentation switched on once it is idle in its BLMOVE; the body
        runs the jobs to count, then it is switched off (unless the body
        failed) and the worker stopped."""
        if shutil.which("valgrind") is None:
            raise BenchError("valgrind is not installed (scripts/install-deps)")
        ini = self.ini(ns, worker={"concurrency": conc})
        if out.exists():
            out.unlink()
        wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--trace-children=no",
                "--instr-atstart=no"]
        w = self.worker(ini, wrap=wrap)
        try:
            self.wait_blocked(1, [w], timeout=120)
            subprocess.run(["callgrind_control", "-i", "on", str(w.pid)], check=True, capture_output=True,
                           timeout=60)
            yield w
            subprocess.run(["callgrind_control", "-i", "off", str(w.pid)], capture_output=True, timeout=60)
        finally:
            w.stop(timeout=120)

    def ceiling(self, n: int, k: int = 2, like_worker: bool = False) -> Dict[str, Any]:
        """spawn_ceiling's figures: per_second, self_us and children_us per spawn."""
        exe = BUILD / "spawn_ceiling"
        argv = [str(exe), "-n", str(n), "-c", str(k)] + (["-w"] if like_worker else [])
        out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=300)
        return json.loads(out.stdout)



def build_helpers() -> None:
    """spawn_ceiling is built by make (the bench target); say so when it is missing."""
    exe = BUILD / "spawn_ceiling"
    src = REPO / "scripts" / "bench.d" / "spawn_ceiling.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        raise SystemExit(f"bench: {exe} is missing or older than {src.name}: run `make bench` "
                         f"(or `make {exe.relative_to(REPO)}`)")
