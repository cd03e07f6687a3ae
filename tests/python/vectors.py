"""Read tests/vectors/payloads.txt (see tests/vectors/make-payloads)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

from debate_queue import Limits
from debate_queue.validate import parse_size

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "payloads.txt"


@dataclass
class Vector:
    line: int
    expect: str
    payload: bytes
    what: str


def load(path: Path = VECTORS) -> Tuple[Limits, List[Vector]]:
    """The Limits the @ lines give and every vector, in order."""
    conf: Dict[str, str] = {}
    vecs: List[Vector] = []
    for n, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip() or text.startswith("#"):
            continue
        if text.startswith("@"):
            key, _, value = text[1:].partition(" ")
            conf[key] = value.strip()
            continue
        body, _, what = text.partition("#")
        expect, hexed = body.split()
        vecs.append(Vector(n, expect, b"" if hexed == "-" else bytes.fromhex(hexed), what.strip()))
    images = tuple([conf["image"]] + conf.get("images", "").split())
    lim = Limits(builds_root=conf["builds_root"], images=images,
                 max_memory=parse_size(conf["max_memory"]), max_cpus=float(conf["max_cpus"]),
                 max_timeout=float(conf["max_timeout"]), timeout=float(conf["timeout"]),
                 max_payload=parse_size(conf["max_payload"]))
    return lim, vecs
