"""The Redis key names of a namespace (PROTOCOL.md): every key is
`{ns}:` followed by its parts joined with colons, so that one namespace's
keys share a cluster hash slot."""
from __future__ import annotations

from typing import Any


def nskey(ns: str, *parts: Any) -> str:
    """nskey("q", "job", "j1") is "{q}:job:j1"; nskey("q") is the prefix "{q}:"."""
    return "{" + ns + "}:" + ":".join(str(p) for p in parts)
