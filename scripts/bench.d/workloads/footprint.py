"""footprint: worker RSS idle and busy; what an idle worker sends Redis."""
import signal
import time

from harness import MIB, LIB_GROUPS, BenchError, lib_group_rss, med, proc_maps_rss, proc_pss, proc_status
from tests.harness import nskey
from workloads import register


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
                    p.hget(nskey(ns, "job", jid), "state")
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
            "idle_cmds_per_beat_excl_fetch": (d["total"] - d["calls"].get("blmove", 0)) / (d["seconds"] / hb),
            "idle_scripts_per_beat": d["calls"].get("evalsha", 0) / (d["seconds"] / hb),
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
    cpb = g("idle_cmds_per_beat_excl_fetch")
    b.row("footprint", f"idle: Redis commands per heartbeat ({hb} s), incl. inside scripts, besides BLMOVE",
          cpb, "", "<= 3", med(cpb) <= 3.0,
          note="a lone worker also does the fleet's reaper round every reaper_interval")
    b.row("footprint", "  of which beat scripts (EVALSHA) per heartbeat", g("idle_scripts_per_beat"), "")
    b.row("footprint", "idle: Redis commands/s, BLMOVE and scripts' included", g("idle_cmds_per_s"), "cmd/s")
    b.row("footprint", f"idle: BLMOVE re-issued in {idle_s} s (30 s block)", g("idle_blmove"), "")


@register("footprint")
def main(b, args):
    run_footprint(b, args.reps, idle_s=args.idle_seconds)
