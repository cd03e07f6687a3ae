"""Who may change things: the token, its cookie, and the same-origin rule.

Reading the dashboard needs nothing.  Changing anything (cancel, retry a
dead letter) needs all of:

- the app was not made read-only (else 403, whatever the token);
- a POST (the routes accept nothing else, so a link or an <img> cannot act);
- an Origin header, or failing that a Referer, whose host:port is the
  request's Host: a page on another site cannot make the browser act for
  it (403 otherwise, and when both headers are missing);
- the token, in an ``X-Debate-Token`` or ``Authorization: Bearer`` header,
  or the cookie the login form sets.  The cookie holds an HMAC of the
  token, not the token, and is HttpOnly and SameSite=Strict.  Every
  comparison is hmac.compare_digest (401 when absent, 403 when wrong).
"""
from __future__ import annotations

import hashlib
import hmac
from typing import Optional
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "debate_dashboard"
HEADER = "x-debate-token"


class Refused(Exception):
    """A state change refused: status (401/403) and a message for the operator."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def cookie_value(token: str) -> str:
    """What the login cookie holds for this token (never the token itself)."""
    return hmac.new(token.encode(), b"debate-dashboard-session-v1", hashlib.sha256).hexdigest()


def _netloc(url: str) -> Optional[str]:
    """host[:port] of an absolute http(s) URL, lower-cased; None if it is not one."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return parts.netloc.lower()


def same_origin(request: Request) -> bool:
    """True when Origin (or, without it, Referer) names the Host the request came to."""
    host = request.headers.get("host", "").lower()
    if not host:
        return False
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        return _netloc(origin) == host
    if origin == "null":
        return False
    referer = request.headers.get("referer")
    if referer:
        return _netloc(referer) == host
    return False


def presented_token(request: Request) -> tuple[Optional[str], Optional[str]]:
    """(token from a header, cookie value), either may be None."""
    tok = request.headers.get(HEADER)
    auth = request.headers.get("authorization", "")
    if tok is None and auth[:7].lower() == "bearer ":
        tok = auth[7:].strip()
    return tok, request.cookies.get(COOKIE)


def authed(request: Request, token: Optional[str]) -> bool:
    """True when the request carries the right token (header or cookie)."""
    if not token:
        return False
    tok, cookie = presented_token(request)
    ok = False
    if tok is not None:
        ok = hmac.compare_digest(tok.encode(), token.encode())
    if not ok and cookie is not None:
        ok = hmac.compare_digest(cookie.encode(), cookie_value(token).encode())
    return ok


def check_change(request: Request, token: Optional[str], read_only: bool) -> None:
    """Raise Refused unless this request may change state."""
    if read_only:
        raise Refused(403, "this dashboard is read-only")
    if request.method != "POST":
        raise Refused(405, "state changes are POST only")
    if not same_origin(request):
        raise Refused(403, "cross-origin request refused: Origin/Referer must match Host")
    tok, cookie = presented_token(request)
    if tok is None and cookie is None:
        raise Refused(401, "log in first: this needs the dashboard token")
    if not authed(request, token):
        raise Refused(403, "wrong token")
