"""The dashboard's ASGI app: pages, JSON, the live stream and the two actions.

    app.mount("/builds", dashboard_app(client, read_only=False, token=TOKEN))

Every page is the same static shell (static/index.html, with the mount
point filled in as its <base>); static/dashboard.js draws the view the
path names from /api/live and the JSON routes.  Build output reaches the
page only as JSON and is put in the DOM with textContent.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import AsyncClient
from . import security
from .live import Hub, stream, valid_jobs
from .source import ID_RE, Source

STATIC = Path(__file__).resolve().parent / "static"

HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; base-uri 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def _int(v: Optional[str], default: int, lo: int, hi: int) -> int:
    try:
        return min(max(int(v or default), lo), hi)
    except ValueError:
        return default


def _base(request: Request) -> str:
    return request.scope.get("root_path", "").rstrip("/") + "/"


class Dashboard:
    """The state behind one mounted dashboard."""

    def __init__(self, source: Source, read_only: bool, token: Optional[str], interval: float) -> None:
        self.src = source
        self.read_only = read_only
        self.token = token
        self.hub = Hub(source, interval=interval)
        self.shell = (STATIC / "index.html").read_text()

    def session(self, request: Request) -> dict[str, Any]:
        return {"read_only": self.read_only, "authed": security.authed(request, self.token),
                "ns": self.src.ns, "server_ts": time.time()}

    # ------------------------------------------------------------ pages

    async def page(self, request: Request) -> Response:
        body = self.shell.replace("{{BASE}}", html.escape(_base(request), quote=True))
        return Response(body, media_type="text/html; charset=utf-8", headers=HEADERS)

    async def login(self, request: Request) -> Response:
        """The login form's POST: set the cookie when the token is right, then back to the page."""
        back = _base(request)
        if not security.same_origin(request):
            return self._refuse(security.Refused(403, "cross-origin login refused"))
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        given = (form.get("token") or [""])[0]
        nxt = (form.get("next") or [""])[0]
        if nxt.startswith(back) and "//" not in nxt and "\\" not in nxt:
            back = nxt
        if self.read_only or not self.token or not security.hmac.compare_digest(given.encode(), self.token.encode()):
            resp = RedirectResponse(back + ("#login=refused" if "#" not in back else ""), status_code=303,
                                    headers=HEADERS)
            return resp
        resp = RedirectResponse(back, status_code=303, headers=HEADERS)
        resp.set_cookie(security.COOKIE, security.cookie_value(self.token), httponly=True, samesite="strict",
                        secure=request.url.scheme == "https", path=_base(request))
        return resp

    async def logout(self, request: Request) -> Response:
        if not security.same_origin(request):
            return self._refuse(security.Refused(403, "cross-origin request refused"))
        resp = RedirectResponse(_base(request), status_code=303, headers=HEADERS)
        resp.delete_cookie(security.COOKIE, path=_base(request))
        return resp

    # ------------------------------------------------------------ JSON

    async def api_session(self, request: Request) -> Response:
        return JSONResponse(self.session(request), headers=HEADERS)

    async def api_snapshot(self, request: Request) -> Response:
        return JSONResponse(await self.hub.current(), headers=HEADERS)

    async def api_queued(self, request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await self.src.queued(_int(q.get("start"), 0, 0, 10**9),
                                                  _int(q.get("count"), 50, 1, 200)), headers=HEADERS)

    async def api_results(self, request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await self.src.results(_int(q.get("start"), 0, 0, 10**9),
                                                   _int(q.get("count"), 50, 1, 200)), headers=HEADERS)

    async def api_dead(self, request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await self.src.dead(_int(q.get("start"), 0, 0, 10**9),
                                                _int(q.get("count"), 50, 1, 200)), headers=HEADERS)

    async def api_job(self, request: Request) -> Response:
        jid = request.path_params["id"]
        if not ID_RE.match(jid):
            return JSONResponse({"error": "not a job id"}, status_code=400, headers=HEADERS)
        return JSONResponse(await self.src.job(jid), headers=HEADERS)

    async def api_live(self, request: Request) -> Response:
        jobs = valid_jobs(request.query_params.getlist("job"))
        last = request.headers.get("last-event-id") or request.query_params.get("last", "")
        headers = dict(HEADERS, **{"X-Accel-Buffering": "no"})
        return StreamingResponse(stream(self.hub, jobs, last, self.session(request)),
                                 media_type="text/event-stream", headers=headers)

    # ------------------------------------------------------------ actions

    def _refuse(self, e: security.Refused) -> Response:
        return JSONResponse({"ok": False, "error": e.message}, status_code=e.status, headers=HEADERS)

    async def _args(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise security.Refused(400, "the body must be a JSON object")
        return body

    async def api_cancel(self, request: Request) -> Response:
        try:
            security.check_change(request, self.token, self.read_only)
            jid = (await self._args(request)).get("id")
        except security.Refused as e:
            return self._refuse(e)
        if not isinstance(jid, str) or not ID_RE.match(jid):
            return JSONResponse({"ok": False, "error": "id: not a job id"}, status_code=400, headers=HEADERS)
        status, msg = await self.src.cancel(jid)
        return JSONResponse({"ok": status == 200, ("message" if status == 200 else "error"): msg},
                            status_code=status, headers=HEADERS)

    async def api_retry_dead(self, request: Request) -> Response:
        try:
            security.check_change(request, self.token, self.read_only)
            args = await self._args(request)
        except security.Refused as e:
            return self._refuse(e)
        index, digest = args.get("index"), args.get("digest")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            return JSONResponse({"ok": False, "error": "index: not a list index"}, status_code=400, headers=HEADERS)
        if not isinstance(digest, str) or len(digest) != 64:
            return JSONResponse({"ok": False, "error": "digest: give the entry's sha256 from /api/dead"},
                                status_code=400, headers=HEADERS)
        status, msg = await self.src.retry_dead(index, digest)
        return JSONResponse({"ok": status == 200, ("message" if status == 200 else "error"): msg},
                            status_code=status, headers=HEADERS)


def dashboard_app(client: AsyncClient, read_only: bool = False, token: Optional[str] = None,
                  interval: float = 2.0) -> Starlette:
    """The dashboard of client's namespace as a Starlette app, to mount or to run on its own.

    read_only hides cancel and retry and refuses them (403).  token is
    what changing anything needs; required unless read_only.  interval:
    seconds between fleet snapshots.

    Live streams end by themselves every 5 minutes (the browser resumes
    them).  uvicorn waits for open responses before it stops, and a
    mounted app hears nothing of that: a backend that wants to stop at
    once calls ``app.state.dashboard.hub.shutdown()`` from its signal
    handler first (``python3 -m debate_queue.dashboard`` does).
    """
    if not read_only and not token:
        raise ValueError("dashboard_app: give token= (or read_only=True): changing anything needs a token")
    d = Dashboard(Source(client), read_only, token, interval)
    routes = [
        Route("/", d.page),
        Route("/dead", d.page),
        Route("/job/{id}", d.page),
        Route("/login", d.login, methods=["POST"]),
        Route("/logout", d.logout, methods=["POST"]),
        Route("/api/session", d.api_session),
        Route("/api/snapshot", d.api_snapshot),
        Route("/api/queued", d.api_queued),
        Route("/api/results", d.api_results),
        Route("/api/dead", d.api_dead),
        Route("/api/job/{id}", d.api_job),
        Route("/api/live", d.api_live),
        Route("/api/cancel", d.api_cancel, methods=["POST"]),
        Route("/api/retry-dead", d.api_retry_dead, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, on_shutdown=[d.hub.close])
    app.state.dashboard = d
    return app
