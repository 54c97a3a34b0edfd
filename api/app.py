"""The Starlette application; endpoints arrive with the API issue, health is here already."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def health(_: Request) -> JSONResponse:
    """Liveness of the API process itself."""
    return JSONResponse({"success": True, "data": {"status": "ok"}})


def create_app() -> Starlette:
    """Build the app (uvicorn factory)."""
    return Starlette(debug=False, routes=[Route("/api/health", health)])
