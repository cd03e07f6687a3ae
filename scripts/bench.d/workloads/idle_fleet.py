"""idle_fleet: many idle workers on one Redis; what they cost it.

--idle-fleet N worker processes (default 1,000; 0 skips the row) on this
host, concurrency 1, exec runtime, the default heartbeat (5 s, ttl 15 s,
reaper 5 s), started in batches of 50; once every one of them blocks in
its BLMOVE, --idle-fleet-seconds (60) of INFO commandstats and Redis CPU
are measured, with Redis's wakeups (its voluntary context switches: what an
idle fleet costs it is mostly the wakeups, not the commands or the
connections; see the README).  Runs once whatever --reps says (it is the
slow row).
Every worker is stopped by its pid in a finally, SIGKILLed if SIGTERM does
not end it.  Their output goes to one log file (the fds of a thousand
would be a thousand).
"""
import signal
import subprocess
import time

from harness import BenchError
from workloads import register


def redis_wakeups(b):
    """redis-server's voluntary context switches so far (one per wait in epoll that ended)."""
    with open(f"/proc/{b.redis.proc.pid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


class Fleet:
    """Worker processes sharing one log file; stopped by pid, whatever happens."""

    def __init__(self, b, ini):
        self.b = b
        self.ini = ini
        self.logpath = b.tmp / "idle-fleet.log"
        self.log = open(self.logpath, "ab")
        self.procs = []

    def start(self, n):
        for _ in range(n):
            self.procs.append(subprocess.Popen([self.b.worker_bin, "-c", self.ini], stdout=self.log,
                                               stderr=subprocess.STDOUT, start_new_session=True))

    def check(self):
        dead = [p for p in self.procs if p.poll() is not None]
        if dead:
            raise BenchError(f"idle fleet: {len(dead)} workers exited (first: {dead[0].returncode}); "
                             f"see {self.logpath}")

    def stop(self):
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except OSError:
                    pass
        deadline = time.time() + 60
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()


def run_idle_fleet(b, n, seconds, hb=5.0):
    ns = b.ns("z")
    ini = b.ini(ns)
    fleet = Fleet(b, ini)
    base = b.blocked_clients()
    try:
        t0 = time.time()
        for i in range(0, n, 50):
            fleet.start(min(50, n - i))
            deadline = time.time() + 120
            while b.blocked_clients() < base + len(fleet.procs):
                fleet.check()
                if time.time() > deadline:
                    raise BenchError(f"idle fleet: {len(fleet.procs)} started, "
                                     f"{b.blocked_clients() - base} blocked after 120 s")
                time.sleep(0.1)
        started_s = time.time() - t0
        time.sleep(hb)    # past every worker's first (registering) beat
        a = b.snapshot()
        wa = redis_wakeups(b)
        time.sleep(seconds)
        fleet.check()
        wz = redis_wakeups(b)
        z = b.snapshot()
        clients = b.info("clients")["connected_clients"]
    finally:
        fleet.stop()
    d = b.delta(a, z)
    beats = n * d["seconds"] / hb
    blmove = d["calls"].get("blmove", 0)
    run = {"workers": n, "seconds": d["seconds"], "start_s": started_s, "clients": clients,
           "redis_cpu_share": d["redis_cpu_s"] / d["seconds"], "calls": d["calls"],
           "commands_per_beat": (d["total"] - blmove) / beats,
           "commands_per_s_per_worker": d["total"] / d["seconds"] / n,
           "blmove_per_s": blmove / d["seconds"], "machine_busy": d["machine_busy"],
           "redis_wakeups_per_s": (wz - wa) / d["seconds"]}
    print(f"  idle fleet: {n} workers (started in {started_s:.0f} s), Redis {run['redis_cpu_share'] * 100:.2f}% "
          f"of a core, {run['commands_per_beat']:.2f} commands per beat per worker", flush=True)
    return run


@register("idle_fleet")
def main(b, args):
    n = args.idle_fleet
    if n <= 0:
        return
    run = run_idle_fleet(b, n, args.idle_fleet_seconds)
    b.raw["idle_fleet"] = run
    share = run["redis_cpu_share"] * 100
    b.row("idle_fleet", f"{n:,} idle workers, {args.idle_fleet_seconds:.0f} s: Redis CPU (share of one core)",
          [share], "%", "<= 1", share <= 1)
    cpb = run["commands_per_beat"]
    b.row("idle_fleet", "  Redis commands per heartbeat per worker, incl. inside scripts (not BLMOVE)",
          [cpb], "", "<= 3", cpb <= 3)
    b.row("idle_fleet", "  Redis commands/s per worker, BLMOVE included", [run["commands_per_s_per_worker"]], "cmd/s")
    b.row("idle_fleet", "  Redis wakeups/s (its voluntary context switches; 10/s of them its hz timer)",
          [run["redis_wakeups_per_s"]], "/s")
    b.row("idle_fleet", "  machine CPU busy (both cores)", [run["machine_busy"] * 100], "%")
