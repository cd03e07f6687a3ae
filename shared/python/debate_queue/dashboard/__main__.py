"""python3 -m debate_queue.dashboard --redis URL --listen HOST:PORT [--read-only]

The token comes from --token-file FILE or DEBATE_DASHBOARD_TOKEN (never
from the command line, where `ps` would show it); without one the
dashboard must be --read-only.
"""
from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m debate_queue.dashboard",
                                 description="The build dashboard, served by uvicorn.")
    ap.add_argument("--redis", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                    help="Redis URL (default REDIS_URL, else redis://127.0.0.1:6379/0)")
    ap.add_argument("--namespace", "-n", default="debate", help="worker.ini [queue] namespace (default debate)")
    ap.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT (default 127.0.0.1:8080)")
    ap.add_argument("--read-only", action="store_true", help="no cancel or retry, refused by the server too")
    ap.add_argument("--token-file", help="file holding the token that cancel and retry need "
                                         "(default: the DEBATE_DASHBOARD_TOKEN environment variable)")
    ap.add_argument("--interval", type=float, default=2.0, help="seconds between fleet snapshots (default 2)")
    a = ap.parse_args(argv)

    host, sep, port = a.listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        ap.error(f"--listen {a.listen!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    token = os.environ.get("DEBATE_DASHBOARD_TOKEN") or None
    if a.token_file:
        try:
            with open(a.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            ap.error(f"--token-file {a.token_file}: {e.strerror}")
        if not token:
            ap.error(f"--token-file {a.token_file}: the file is empty")
    if not token and not a.read_only:
        ap.error("no token: give --token-file FILE (or DEBATE_DASHBOARD_TOKEN), or --read-only")

    import uvicorn

    from .. import AsyncClient
    from .app import dashboard_app
    app = dashboard_app(AsyncClient(a.redis, a.namespace), read_only=a.read_only, token=token,
                        interval=a.interval)
    print(f"dashboard: http://{host if ':' not in host else '[' + host.strip('[]') + ']'}:{port}/ "
          f"(namespace {a.namespace}{', read-only' if a.read_only else ''})", file=sys.stderr, flush=True)
    server = uvicorn.Server(uvicorn.Config(app, host=host.strip("[]"), port=int(port), log_level="warning",
                                           access_log=False))
    stop = server.handle_exit

    def handle_exit(sig, frame):  # type: ignore[no-untyped-def]
        # uvicorn waits for open responses before it exits: end the live
        # streams first, or a stop would wait for every open tab.
        app.state.dashboard.hub.shutdown()
        stop(sig, frame)
    server.handle_exit = handle_exit  # type: ignore[method-assign]
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
