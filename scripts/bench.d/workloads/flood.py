"""flood: one job printing 1,000,000 lines to a SUBSCRIBEr."""
import threading
import time

import msgpack
import redis

from harness import MIB, BenchError, med, proc_cpu, proc_status
from tests.harness import nskey
from workloads import register


class Subscriber(threading.Thread):
    """Counts the log lines of one job as a dashboard would see them."""

    def __init__(self, b, ns, jid):
        super().__init__(daemon=True)
        self.client = redis.Redis(host="127.0.0.1", port=b.redis.port, socket_timeout=300)
        self.ps = self.client.pubsub()
        self.ps.subscribe(nskey(ns, "progress", jid))
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
            got = b.r.blpop(nskey(ns, "result", jid), timeout=60)
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


@register("flood")
def main(b, args):
    run_flood(b, args.reps)
