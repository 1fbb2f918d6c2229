"""The web dashboard's files, served at `/` beside the API.

The dashboard is a single-page app built by `scripts/bootstrap` (web/ -> `_dashboard/`, in the wheel,
not in git). Only its own paths are served: `/`, `/login`, `/signup`, `/forgot-password`, `/reset-password`,
`/activate`, `/dashboard/...`, `/admin/...` get
`index.html`, `/_app/...` the hashed scripts and styles. Everything else (`/v1`, `/docs`, `/openapi.json`,
`/health`, E2B's `/sandboxes`, `/v2`, `/templates`, `/snapshots`) stays the API's, and the traffic proxy
in front of the app still takes `{port}-{id}.{domain}` first."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(__file__).with_name("_dashboard")
#: The single-page app's own paths; each gets `index.html` and the app routes in the browser.
PAGES = (
    "/", "/login", "/signup", "/forgot-password", "/reset-password", "/activate",
    "/dashboard", "/dashboard/{rest:path}", "/admin", "/admin/{rest:path}",
)  # fmt: skip
_PAGE_HEADERS = {
    "cache-control": "no-cache",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    # With the policy in the page's own <meta> (script hashes), which cannot say frame-ancestors.
    "content-security-policy": "frame-ancestors 'none'; object-src 'none'; base-uri 'self'",
}


class _Assets(StaticFiles):
    """`/_app/...`: content-hashed names under `immutable/` are cached for good."""

    def file_response(
        self,
        full_path: str | os.PathLike[str],
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        immutable = "/immutable/" in str(full_path)
        response.headers["cache-control"] = "public, max-age=31536000, immutable" if immutable else "no-cache"
        response.headers["x-content-type-options"] = "nosniff"
        return response


def mount(app: FastAPI, directory: Path | None = None) -> None:
    """Serve the built dashboard from `directory` (default: the package's `_dashboard`)."""
    root = directory or ASSETS
    index, icon = root / "index.html", root / "favicon.svg"

    async def page() -> Response:
        if not index.is_file():
            return PlainTextResponse(
                "The dashboard is not built: run scripts/bootstrap (or `npm run build` in web/).",
                status_code=503,
            )
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)

    async def favicon() -> Response:
        if not icon.is_file():
            return Response(status_code=404)
        cache = {"cache-control": "public, max-age=86400"}
        return FileResponse(icon, media_type="image/svg+xml", headers=cache)

    for path in PAGES:
        app.add_api_route(path, page, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route("/favicon.svg", favicon, methods=["GET"], include_in_schema=False)
    app.mount("/_app", _Assets(directory=root / "_app", check_dir=False), name="dashboard-assets")
