"""The build dashboard: an ASGI (Starlette) app over the queue's Redis.

    from debate_queue import AsyncClient
    from debate_queue.dashboard import dashboard_app
    app.mount("/builds", dashboard_app(AsyncClient(url, ns), token=TOKEN))

or on its own: python3 -m debate_queue.dashboard --redis URL --listen 127.0.0.1:8080
"""
from .app import dashboard_app

__all__ = ["dashboard_app"]
