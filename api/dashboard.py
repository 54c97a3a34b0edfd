"""`GET /dashboard`: the built-in live page, one static HTML file with its CSS and script inline.

The page reads only this server's `/api` endpoints, so its Content-Security-Policy allows nothing
else: no external origin, and inline code only by the SHA-256 of the page's own `<style>` and
`<script>` blocks (an injected script or style would not run). It is not an API endpoint: no JSON
envelope, no OpenAPI operation.
"""

from __future__ import annotations

import base64
import hashlib
import re
from importlib.resources import files

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

PAGE_RESOURCE = ("api", "static/dashboard.html")
_BLOCK = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)


def _source_hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions for every inline `<tag>` block (exact text, as the browser hashes)."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(body.encode()).digest()).decode() + "'"
        for name, body in _BLOCK.findall(html)
        if name == tag
    ]


def content_security_policy(html: str) -> str:
    """The page's policy: its own inline blocks by hash, same-origin fetches, nothing more."""
    scripts, styles = _source_hashes(html, "script"), _source_hashes(html, "style")
    if not scripts or not styles:
        raise ValueError("the dashboard page has no inline <script> or <style> block")
    return "; ".join(
        [
            "default-src 'none'",
            "script-src " + " ".join(scripts),
            "style-src " + " ".join(styles),
            "connect-src 'self'",
            "img-src 'self' data:",  # the empty data: favicon (no request for /favicon.ico)
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


def dashboard_route() -> Route:
    """The `/dashboard` route; the page is read and its policy computed once, here."""
    package, name = PAGE_RESOURCE
    html = files(package).joinpath(name).read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
        # Revalidate on every load, so a new version of the page is seen after an upgrade.
        "Cache-Control": "no-cache",
    }
    body = html.encode()

    async def dashboard(_: Request) -> Response:
        return HTMLResponse(body, headers=headers)

    return Route("/dashboard", dashboard, methods=["GET"], include_in_schema=False)
