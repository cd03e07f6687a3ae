"""enqueue: `enqueue submit`, a pipelining redis-py producer, MULTI/EXEC per job."""
import subprocess
import time

import msgpack

from harness import BenchError
from tests.harness import nskey
from workloads import register


def run_enqueue(b, reps, n_cli=200, n_pipe=10000, n_tx=2000):
    runs = []
    for rep in range(reps):
        run = {}
        ns = b.ns("e")
        ini = b.ini(ns)
        q = nskey(ns, "queue")
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
            p.hset(nskey(ns2, "job", jid), mapping={"state": "queued", "enqueued_at": now})
            p.lpush(nskey(ns2, "queue"), msgpack.packb({"id": jid, "profile": "p", "output": "o",
                                                        "source_date_epoch": 1700000000, "enqueued_at": now}))
        p.execute()
        run["pipeline_per_s"] = n_pipe / (time.perf_counter() - t0)
        if b.r.llen(nskey(ns2, "queue")) != n_pipe:
            raise BenchError("enqueue: pipelined jobs missing")
        # redis-py, one MULTI/EXEC per job (PROTOCOL.md's producer).
        ns3 = b.ns("e")
        t0 = time.perf_counter()
        for i in range(n_tx):
            jid = f"x{i:05d}"
            now = time.time()
            with b.r.pipeline() as p:
                p.hset(nskey(ns3, "job", jid), mapping={"state": "queued", "enqueued_at": now})
                p.lpush(nskey(ns3, "queue"), msgpack.packb({"id": jid, "profile": "p", "output": "o",
                                                            "source_date_epoch": 1700000000, "enqueued_at": now}))
                p.execute()
        run["tx_per_s"] = n_tx / (time.perf_counter() - t0)
        runs.append(run)
        print(f"  enqueue rep {rep + 1}: cli {run['cli_per_s']:.0f}/s (process floor "
              f"{run['spawn_floor_per_s']:.0f}/s), pipeline {run['pipeline_per_s']:.0f}/s, "
              f"multi/exec {run['tx_per_s']:.0f}/s", flush=True)
        b.r.delete(q, nskey(ns2, "queue"), nskey(ns3, "queue"))
    b.raw["enqueue"] = runs
    g = lambda k: [r[k] for r in runs]  # noqa: E731
    b.row("enqueue", f"`enqueue submit`, one process per job ({n_cli} seq.)", g("cli_per_s"), "jobs/s",
          note="process-bound")
    b.row("enqueue", "  floor: subprocess.run(/bin/true) from the same Python", g("spawn_floor_per_s"), "runs/s")
    b.row("enqueue", f"redis-py, one pipeline of {n_pipe:,} jobs", g("pipeline_per_s"), "jobs/s")
    b.row("enqueue", f"redis-py, one MULTI/EXEC per job ({n_tx:,})", g("tx_per_s"), "jobs/s")


@register("enqueue")
def main(b, args):
    run_enqueue(b, args.reps)
