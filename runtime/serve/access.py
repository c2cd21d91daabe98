"""Who may call the API: a bearer token on /v1/* when the service has one, and the warning for an
exposed address without one.

The page and /healthz stay open (the page has to load to ask for the token; a health probe carries
none). Tokens are compared with hmac.compare_digest so the comparison time says nothing about them.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

API_PREFIX = "/v1/"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def exposure_warning(host: str, token: str | None) -> str | None:
    """The warning to print when the service is reachable from other machines without a token."""
    if is_loopback(host) or token:
        return None
    return (f"binding {host} makes the service reachable from other machines without a token: anyone there "
            "can run the model; pass --token T (or keep the default 127.0.0.1 behind a reverse proxy)")


class BearerToken:
    """ASGI middleware: /v1/* needs `Authorization: Bearer <token>`, else 401."""

    def __init__(self, app, token: str):
        self.app, self.expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(API_PREFIX):
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                return await _unauthorized(send, "missing token" if not given else "wrong token")
        return await self.app(scope, receive, send)


async def _unauthorized(send, why: str) -> None:
    body = (json.dumps({"error": f"{why}: send 'Authorization: Bearer <token>' (the service's --token)"}) + "\n").encode()
    await send({"type": "http.response.start", "status": 401,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"www-authenticate", b'Bearer realm="florence2"')]})
    await send({"type": "http.response.body", "body": body})
