"""Heartbeats on the wall clock's grid (the idle fleet's cost to Redis).

An idle fleet costs Redis a wakeup per request it sends, far more than
the commands; so every worker beats on a grid of 0.1 s slots (its slot
from its id), and workers sharing a slot beat in the same instant, which
Redis takes in one wakeup.  The score a beat writes into {ns}:workers is
the worker's clock when it sent the beat: on the grid, that score lies
within a few milliseconds after a multiple of 0.1 s.  The beats still
come every heartbeat_interval (liveness by heartbeat_ttl unchanged).
"""
import time

from tests.harness import nskey, poll

GRID = 0.1


def test_idle_beats_fall_on_the_grid_and_keep_the_interval(fleet, r):
    n, interval = 12, 2
    for _ in range(n):
        fleet.start(worker={"heartbeat_interval": interval, "heartbeat_ttl": 3 * interval,
                            "reaper_interval": interval})
    key = nskey(fleet.ns, "workers")
    poll(lambda: r.zcard(key) == n, 20, f"{n} workers registered")
    time.sleep(interval + 0.5)    # past every worker's first timed beat

    offsets = []
    last = {}
    gaps = {}
    t_end = time.time() + 3 * interval
    while time.time() < t_end:
        for member, score in r.zrange(key, 0, -1, withscores=True):
            if member in last and score != last[member]:
                gaps.setdefault(member, []).append(score - last[member])
                offsets.append(score % GRID)
            last[member] = score
        time.sleep(0.05)

    assert len(gaps) == n, f"only {len(gaps)} of {n} workers beat in {3 * interval} s"
    # Every beat within the interval of the one before (a little slack for a loaded machine).
    worst = max(max(g) for g in gaps.values())
    assert worst <= interval + 0.5, f"a gap of {worst:.3f} s between two beats (interval {interval})"
    # On the grid: a beat's score lies just after a multiple of GRID.  Spread
    # at random (the old timer), only about 30% of them would.
    on = [o for o in offsets if o < 0.03]
    assert len(on) >= 0.9 * len(offsets), \
        f"{len(on)} of {len(offsets)} beats on the {GRID} s grid; offsets {sorted(round(o, 3) for o in offsets)}"
