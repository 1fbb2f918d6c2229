"""Jupyter messages as the lines of E2B's /execute stream."""

from __future__ import annotations

from typing import Any

#: MIME type -> field of E2B's `Result`; every other type lands in `extra`.
MIME_FIELDS: dict[str, str] = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "application/pdf": "pdf",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
    "e2b/data": "data",
    "e2b/chart": "chart",
}


def result(bundle: dict[str, Any], *, is_main_result: bool) -> dict[str, Any]:
    """An `execute_result` (the main result) or `display_data` bundle as a `result` line."""
    data = dict(bundle)
    out: dict[str, Any] = {"type": "result"}
    for mime, field in MIME_FIELDS.items():
        value = data.pop(mime, None)
        if value is not None:
            out[field] = value
    text = out.get("text")
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        out["text"] = text[1:-1]  # E2B shows a string result without its quotes
    out["extra"] = data
    out["is_main_result"] = is_main_result
    return out


def error(name: str, value: str, traceback: list[str] | str) -> dict[str, Any]:
    lines = traceback if isinstance(traceback, str) else "\n".join(traceback)
    return {"type": "error", "name": name, "value": value, "traceback": lines}


def stream(name: str, text: str, timestamp: str | None) -> dict[str, Any]:
    return {"type": name, "text": text, "timestamp": timestamp}


def execution_count(count: int) -> dict[str, Any]:
    return {"type": "number_of_executions", "execution_count": count}


KEEPALIVE: dict[str, Any] = {"type": "keepalive"}
END: dict[str, Any] = {"type": "end_of_execution"}
UNEXPECTED_END: dict[str, Any] = {"type": "unexpected_end_of_execution"}
