"""`GET /metrics`: the control plane's Prometheus metrics (`_metrics.py`), for the operator's scraper only.
It wants `Authorization: Bearer <WRENN_METRICS_TOKEN>`; without that setting the route does not exist
(404). No tenant credential (an API key, a user's JWT) opens it, and the traffic proxy never reaches it
(a `{port}-{capsule}.{domain}` request goes to the capsule)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from .. import _errors
from .._deps import Db

router = APIRouter(tags=["observability"])


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request, session: Db) -> Response:
    wanted: str = request.app.state.settings.metrics_token
    if not wanted:
        raise _errors.not_found("/metrics")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), wanted.encode()):
        raise _errors.unauthorized("/metrics wants the scrape token (Authorization: Bearer ...)")
    registry = request.app.state.metrics
    await registry.refresh(session)
    return Response(registry.render(), media_type=CONTENT_TYPE_LATEST)
