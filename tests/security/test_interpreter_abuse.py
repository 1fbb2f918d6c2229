"""Abuse of the code interpreter's execution server (guest code on port 49999, reached through the traffic
proxy): what a hostile request body can and cannot make it do. The server runs against real kernels on
loopback (tests/interpreter/_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.interpreter._server import Interpreter, running_interpreter


@pytest.fixture(scope="module")
def interpreter() -> Iterator[Interpreter]:
    with running_interpreter() as server:
        yield server


def test_env_values_cannot_inject_code(interpreter: Interpreter, tmp_path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        f"'); open({str(marker)!r}, 'w').close(); ('",
        f"\"; import os; os.system('touch {marker}'); \"",
        f"$(touch {marker})",
        f"`touch {marker}`; touch {marker}",
        "\n".join(["x", f"import os; os.system('touch {marker}')"]),
    ]
    for value in payloads:
        lines = interpreter.execute("import os\nos.environ['P']", env_vars={"P": value})
        assert [line["text"] for line in lines if line["type"] == "result"] == [repr(value)[1:-1]]
        lines = interpreter.execute("printf '%s\\n' \"$P\"", language="bash", env_vars={"P": value})
        assert "".join(line["text"] for line in lines if line["type"] == "stdout") == value + "\n"
    assert not marker.exists()


@pytest.mark.parametrize(
    "name", ["A=B", "A B", "$(id)", "1ABC", "", "A;touch /tmp/x", "A\nB", "x" * 300, "PÄTH"]
)
def test_env_names_outside_the_portable_set_are_refused(interpreter: Interpreter, name: str) -> None:
    r = httpx.post(f"{interpreter.url}/execute", json={"code": "1", "env_vars": {name: "v"}})
    assert r.status_code == 400


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[1, 2]", b'{"code": null}', b'{"code": "1", "env_vars": [1]}',
     b'{"code": "1", "env_vars": {"A": 1}}', b'{"code": "1", "env_vars": {"A": "a\\u0000b"}}',
     b'{"code": "1", "timeout": -1}', b'{"code": "1", "timeout": "soon"}', b'{"code": "1", "language": 7}',
     b'{"code": "1", "context_id": 7}'],
)  # fmt: skip
def test_malformed_bodies_are_400(interpreter: Interpreter, body: bytes) -> None:
    r = httpx.post(f"{interpreter.url}/execute", content=body)
    assert r.status_code == 400, r.text


def test_a_huge_body_is_refused_without_reading_it_all(interpreter: Interpreter) -> None:
    r = httpx.post(f"{interpreter.url}/execute", content=b'{"code": "' + b"x" * (17 * 1024 * 1024) + b'"}')
    assert r.status_code == 413


@pytest.mark.parametrize("cwd", ["relative/dir", "", "/tmp/\x00x", 5])
def test_context_directories_must_be_absolute_paths(interpreter: Interpreter, cwd: object) -> None:
    r = httpx.post(f"{interpreter.url}/contexts", json={"cwd": cwd})
    assert r.status_code == 400


def test_a_cwd_that_does_not_exist_is_a_clear_error_and_leaves_no_kernel(interpreter: Interpreter) -> None:
    before = httpx.get(f"{interpreter.url}/contexts").json()
    r = httpx.post(f"{interpreter.url}/contexts", json={"cwd": "/no/such/dir"}, timeout=60)
    assert r.status_code == 400 and "/no/such/dir" in r.text
    assert httpx.get(f"{interpreter.url}/contexts").json() == before


@pytest.mark.parametrize("context_id", ["..%2F..%2Fapi%2Fkernels", "x" * 5000, "%00"])
def test_unknown_context_ids_are_404(interpreter: Interpreter, context_id: str) -> None:
    assert httpx.delete(f"{interpreter.url}/contexts/{context_id}").status_code == 404
    assert httpx.post(f"{interpreter.url}/contexts/{context_id}/restart").status_code == 404
