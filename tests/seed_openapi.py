"""Responses checked against the seed's OpenAPI document (`controlplane/wrenn-openapi.yaml`, from the seed
SDK's repository), field by field, with a JSON-schema validator: types, nullability, enums, and times in
RFC 3339 with an offset. Every `/v1` response whose path and status the document describes is checked; a
path it does not describe (ours alone) is left alone.

`check(response)` raises `SchemaViolation`; `hook` is the same as an httpx response hook.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml
from jsonschema import Draft202012Validator, FormatChecker

SPEC = Path(__file__).parent / "controlplane" / "wrenn-openapi.yaml"
_RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_formats = FormatChecker()


@_formats.checks("date-time")
def _is_rfc3339(value: object) -> bool:
    return not isinstance(value, str) or bool(_RFC3339.match(value))


class SchemaViolation(AssertionError):
    pass


def _resolve(node: Any, spec: dict[str, Any]) -> Any:
    """`node` with every `$ref` inlined and OpenAPI 3.0's `nullable` said in JSON Schema."""
    if isinstance(node, list):
        return [_resolve(n, spec) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target.get(part, {})  # the document names a few responses it never defines
        resolved = _resolve(target, spec)
        if node.get("nullable"):
            return {"anyOf": [resolved, {"type": "null"}]}
        return resolved
    out = {k: _resolve(v, spec) for k, v in node.items() if k not in ("nullable", "example")}
    if node.get("nullable"):
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


@functools.cache
def _operations() -> list[tuple[re.Pattern[str], str, dict[str, Any]]]:
    spec = yaml.safe_load(SPEC.read_text())
    found = []
    for path, item in spec["paths"].items():
        pattern = re.compile("^" + re.sub(r"\{[^/]+\}", "[^/]+", path) + "$")
        for method, operation in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                found.append((pattern, method.upper(), _resolve(operation.get("responses", {}), spec)))
    # literal paths first: /v1/capsules/stats is not /v1/capsules/{id}
    found.sort(key=lambda f: f[0].pattern.count("[^/]+"))
    return found


def schema_for(method: str, path: str, status: int) -> dict[str, Any] | None:
    """The JSON schema the seed's document gives this answer, or None where it describes none."""
    for pattern, verb, responses in _operations():
        if verb == method.upper() and pattern.match(path):
            response = responses.get(str(status)) or responses.get("default")
            if not response:
                return None
            content = response.get("content", {}).get("application/json")
            return content.get("schema") if content else None
    return None


def check(response: httpx.Response) -> None:
    request = response.request
    if not request.url.path.startswith("/v1/"):
        return
    schema = schema_for(request.method, request.url.path, response.status_code)
    if schema is None:
        return
    response.read()
    try:
        body = response.json()
    except json.JSONDecodeError:
        raise SchemaViolation(
            f"{request.method} {request.url.path}: not JSON: {response.text[:200]}"
        ) from None
    errors = sorted(
        Draft202012Validator(schema, format_checker=_formats).iter_errors(body), key=lambda e: list(e.path)
    )
    if errors:
        problems = "; ".join(
            f"{'/'.join(map(str, e.path)) or '<body>'}: {e.message[:200]}" for e in errors[:5]
        )
        raise SchemaViolation(
            f"{request.method} {request.url.path} -> {response.status_code} differs from the seed's schema: "
            f"{problems}"
        )


def hook(response: httpx.Response) -> None:
    check(response)
