"""latency: LPUSH -> the `started` event, and -> the first `log` line.

One idle worker (concurrency 1, blocked in its BLMOVE before each job) and
one PSUBSCRIBEr of {ns}:progress:*, in this one thread: the clock starts
just before the LPUSH is written, and stops when the subscriber reads the
event.  The job is /bin/echo hi (exec runtime): its line reaches the
worker with the child's exit; a job's first line is sent at once in any
case (output.c), not after log_batch_interval.
"""
import time

import msgpack

from harness import BenchError, med
from tests.harness import nskey
from workloads import register


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def run_latency(b, reps, n=200):
    runs = []
    for rep in range(reps):
        ns = b.ns("l")
        ini = b.ini(ns, sandbox={"command": "/bin/echo hi"})
        w = b.worker(ini)
        sub = b.redis.client()
        ps = sub.pubsub(ignore_subscribe_messages=True)
        started, first_log = [], []
        try:
            ps.psubscribe(nskey(ns, "progress", "*"))
            b.wait_blocked(1, [w])
            for k in range(n):
                jid = f"l{k:05d}"
                job = msgpack.packb({"id": jid, "profile": "p", "output": f"o/{jid}", "source_date_epoch": 1700000000})
                b.r.hset(nskey(ns, "job", jid), "state", "queued")
                b.wait_blocked(1, [w])
                t0 = time.perf_counter()
                b.r.lpush(nskey(ns, "queue"), job)
                got = {}
                deadline = t0 + 10
                while "finished" not in got:
                    m = ps.get_message(timeout=1.0)
                    now = time.perf_counter()
                    if now > deadline:
                        w.check()
                        raise BenchError(f"latency: job {jid} did not finish within 10 s")
                    if m is None or m["type"] != "pmessage":
                        continue
                    ev = msgpack.unpackb(m["data"])
                    if ev.get("id") == jid:
                        got.setdefault(ev["type"], now)
                if "started" not in got or "log" not in got:
                    raise BenchError(f"latency: job {jid}: events {sorted(got)}")
                started.append((got["started"] - t0) * 1000)
                first_log.append((got["log"] - t0) * 1000)
        finally:
            ps.close()
            sub.close()
            w.stop()
        run = {"started_ms": started, "log_ms": first_log,
               "started_p50": pct(started, 50), "started_p99": pct(started, 99),
               "log_p50": pct(first_log, 50), "log_p99": pct(first_log, 99)}
        runs.append(run)
        print(f"  latency rep {rep + 1}: started p50 {run['started_p50']:.2f} ms p99 {run['started_p99']:.2f} ms; "
              f"first log line p50 {run['log_p50']:.2f} ms p99 {run['log_p99']:.2f} ms", flush=True)
    b.raw["latency"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    for key, what in (("started", "`started` event"), ("log", "first `log` line")):
        p50, p99 = g(f"{key}_p50"), g(f"{key}_p99")
        b.row("latency", f"LPUSH -> {what}, idle worker, p50 ({n} jobs)", p50, "ms", "<= 1", med(p50) <= 1)
        b.row("latency", f"LPUSH -> {what}, p99", p99, "ms", "<= 5", med(p99) <= 5)


@register("latency")
def main(b, args):
    run_latency(b, args.reps)
