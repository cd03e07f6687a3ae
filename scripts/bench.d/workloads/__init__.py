"""The registry of workloads: each module here registers its entry point.

A workload is a function main(b, args) that runs its reps against the Bench
b and adds its rows (b.row); `optional` ones run only when asked by name
(--only NAME, or --profile).  The order of REGISTRY is the order they run in.
"""
import collections

Workload = collections.namedtuple("Workload", "name run optional")
REGISTRY = {}


def register(name, optional=False):
    """Decorator: register main(b, args) as workload `name`."""
    def deco(fn):
        REGISTRY[name] = Workload(name, fn, optional)
        return fn
    return deco


def load():
    """Import every workload module (in run order) and return the registry."""
    import importlib
    for name in ("dispatch", "instructions", "latency", "container", "enqueue", "flood", "footprint",
                 "idle_fleet", "fleet", "profile"):
        importlib.import_module(f"workloads.{name}")
    return REGISTRY
