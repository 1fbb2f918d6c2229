"""The SDK's pure logic: no server involved (responses are built by hand, as a parser's input)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import warnings

import httpx
import pytest

from wrenn.sdk import _api
from wrenn.sdk._config import DEFAULT_BASE_URL, Config, proxy_url
from wrenn.sdk._exceptions import (
    WrennAgentError,
    WrennAuthenticationError,
    WrennConflictError,
    WrennError,
    WrennForbiddenError,
    WrennHostHasCapsulesError,
    WrennHostUnavailableError,
    WrennInternalError,
    WrennNotFoundError,
    WrennTooLargeError,
    WrennValidationError,
    error_from_body,
    error_from_response,
)
from wrenn.sdk._git_ops import (
    GitBranch,
    embed_credentials,
    parse_branches,
    parse_status,
    repo_dir_of,
    strip_credentials,
)
from wrenn.sdk._models import (
    CapsuleInfo,
    CommandResult,
    FilesystemEvent,
    PtyEvent,
    Status,
    StreamExitEvent,
    StreamStartEvent,
    parse_stream_event,
)


def _error(status: int, code: str, message: str = "m", **extra: object) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, **extra}})


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "invalid_request", WrennValidationError),
        (401, "unauthorized", WrennAuthenticationError),
        (403, "forbidden", WrennForbiddenError),
        (404, "not_found", WrennNotFoundError),
        (409, "invalid_state", WrennConflictError),
        (409, "conflict", WrennConflictError),
        (409, "template_name_taken", WrennConflictError),
        (413, "too_large", WrennTooLargeError),
        (502, "agent_error", WrennAgentError),
        (503, "host_unavailable", WrennHostUnavailableError),
        (503, "no_hosts_available", WrennHostUnavailableError),
        (500, "internal_error", WrennInternalError),
        (404, "brand_new_not_found_code", WrennNotFoundError),  # unknown code: by status
        (418, "teapot", WrennError),
    ],
)
def test_error_mapping(status: int, code: str, cls: type[WrennError]) -> None:
    exc = error_from_response(_error(status, code, "boom"))
    assert type(exc) is cls
    assert (exc.code, exc.message, exc.status_code) == (code, "boom", status)
    assert str(exc) == "boom"


def test_has_active_sandboxes_carries_the_ids_from_inside_error() -> None:
    exc = error_from_response(_error(409, "has_active_sandboxes", "busy", sandbox_ids=["cl-a", "cl-b"]))
    assert isinstance(exc, WrennHostHasCapsulesError)
    assert isinstance(exc, WrennConflictError)
    assert exc.capsule_ids == ["cl-a", "cl-b"] == exc.sandbox_ids


def test_a_body_that_is_not_the_error_json() -> None:
    exc = error_from_response(httpx.Response(502, text="Bad Gateway"))
    assert isinstance(exc, WrennAgentError)
    assert (exc.code, exc.message) == ("internal_error", "Bad Gateway")
    assert isinstance(error_from_body(500, ["x"]), WrennInternalError)
    assert error_from_body(599, None).message == "HTTP 599"


def test_a_parser_raises_the_mapped_error_and_passes_success() -> None:
    call = _api.get_capsule("cl-x")
    with pytest.raises(WrennNotFoundError):
        call.parse(_error(404, "not_found"))
    info = call.parse(httpx.Response(200, json={"id": "cl-x", "status": "running", "vcpus": 2}))
    assert isinstance(info, CapsuleInfo)
    assert info.status == Status.running and info.vcpus == 2


def test_exec_output_in_base64_is_decoded() -> None:
    raw_out, raw_err = b"\xff\xfeok\n", b"err\n"
    result = CommandResult.from_json(
        {
            "stdout": base64.b64encode(raw_out).decode(),
            "stderr": base64.b64encode(raw_err).decode(),
            "exit_code": 3,
            "duration_ms": 12,
            "encoding": "base64",
        }
    )
    assert result.stdout_bytes == raw_out and result.stdout == raw_out.decode("utf-8", errors="replace")
    assert result.stderr == "err\n" and result.exit_code == 3 and result.duration_ms == 12
    plain = CommandResult.from_json({"stdout": "héllo", "stderr": "", "exit_code": 0, "encoding": "utf-8"})
    assert plain.stdout == "héllo" and plain.stdout_bytes == "héllo".encode()


def test_run_request_wraps_in_a_shell_and_pads_the_http_timeout() -> None:
    call = _api.run_command("cl-x", "echo $A", timeout=45, envs={"A": "1"}, cwd="/tmp")
    assert call.method == "POST" and call.path == "/v1/capsules/cl-x/exec"
    assert call.json == {
        "cmd": "/bin/sh",
        "args": ["-c", "echo $A"],
        "background": False,
        "timeout_sec": 45,
        "envs": {"A": "1"},
        "cwd": "/tmp",
    }
    assert call.timeout == 55
    assert _api.run_command("cl-x", "true", timeout=None, envs=None, cwd=None).timeout == 40
    background = _api.start_command("cl-x", "sleep 9", envs=None, cwd=None, tag="t1")
    assert background.json == {"cmd": "/bin/sh", "args": ["-c", "sleep 9"], "background": True, "tag": "t1"}
    handle = background.parse(httpx.Response(202, json={"pid": 7, "tag": "t1", "sandbox_id": "cl-x"}))
    assert (handle.pid, handle.tag, handle.capsule_id) == (7, "t1", "cl-x")


def test_long_operations_have_long_timeouts() -> None:
    assert _api.pause_capsule("cl-x").timeout == 60
    assert _api.create_snapshot("cl-x", None, False).timeout == 60
    snap = _api.create_snapshot("cl-x", "s1", True)
    assert snap.json == {"sandbox_id": "cl-x", "name": "s1"} and snap.params == {"overwrite": "true"}


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("http://localhost:8080", "ws://3000-cl-abc.localhost:8080"),
        ("https://wrenn.example.com/api", "wss://3000-cl-abc.wrenn.example.com"),
        ("https://wrenn.example.com:8443/", "wss://3000-cl-abc.wrenn.example.com:8443"),
    ],
)
def test_get_url(base: str, expected: str) -> None:
    assert proxy_url(base, "cl-abc", 3000) == expected


def test_get_url_rejects_bad_ports() -> None:
    with pytest.raises(ValueError):
        proxy_url("http://localhost:8080", "cl-abc", 0)


def test_env_var_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WRENN_API_KEY", raising=False)
    monkeypatch.delenv("WRENN_BASE_URL", raising=False)
    with pytest.raises(ValueError, match="WRENN_API_KEY"):
        Config.resolve()
    monkeypatch.setenv("WRENN_API_KEY", "wrn_env")
    assert (
        Config.resolve() == Config("wrn_env", DEFAULT_BASE_URL) == Config("wrn_env", "http://localhost:8080")
    )
    monkeypatch.setenv("WRENN_BASE_URL", "https://cp.example/")
    assert Config.resolve() == Config("wrn_env", "https://cp.example")
    assert Config.resolve("wrn_arg", "http://other:9") == Config("wrn_arg", "http://other:9")
    kwargs = Config.resolve().client_kwargs()
    assert kwargs["headers"]["X-API-Key"] == "wrn_env" and kwargs["base_url"] == "https://cp.example"


def test_sandbox_alias_warns() -> None:
    import wrenn

    with pytest.warns(FutureWarning, match="use 'Capsule'"):
        sandbox = wrenn.Sandbox
    assert sandbox is wrenn.Capsule
    with pytest.warns(FutureWarning):
        assert wrenn.WrennHostHasSandboxesError is wrenn.WrennHostHasCapsulesError
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from wrenn import AsyncCapsule, Capsule  # no warning for the real names

        assert Capsule.__name__ == "Capsule" and AsyncCapsule.__name__ == "AsyncCapsule"


def test_seed_module_names_are_aliases() -> None:
    import wrenn.capsule
    import wrenn.commands
    import wrenn.exceptions
    import wrenn.files
    import wrenn.git
    import wrenn.models
    import wrenn.pty
    from wrenn import sdk

    assert wrenn.capsule.Capsule is sdk.Capsule and wrenn.capsule.AsyncCapsule is sdk.AsyncCapsule
    assert wrenn.commands.CommandResult is sdk.CommandResult
    assert wrenn.files.Files is sdk.Files and wrenn.files.FileEntry is sdk.FileEntry
    assert wrenn.models.Capsule is sdk.CapsuleInfo and wrenn.models.Template is sdk.Template
    assert wrenn.pty.PtySession is sdk.PtySession
    assert wrenn.git.Git is sdk.Git
    assert wrenn.exceptions.WrennNotFoundError is sdk.WrennNotFoundError


def test_importing_wrenn_loads_neither_the_sdk_nor_the_server() -> None:
    code = (
        "import sys, wrenn; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('httpx', 'httpx_ws', 'fastapi', 'sqlalchemy') or m.startswith(('wrenn.sdk', 'wrenn.controlplane'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    code = "import sys; from wrenn import Capsule; print(sorted(m for m in sys.modules if m.startswith(('wrenn.controlplane', 'wrenn.agent', 'wrenn.envd', 'fastapi', 'sqlalchemy'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_stream_and_pty_and_watch_messages() -> None:
    assert parse_stream_event({"type": "start", "pid": 9}) == StreamStartEvent("start", pid=9)
    assert parse_stream_event({"type": "exit", "exit_code": 2}) == StreamExitEvent("exit", exit_code=2)
    assert parse_stream_event({"type": "new"}).type == "new"
    assert _api.stream_start_message("ls -l", None) == {
        "type": "start",
        "cmd": "/bin/sh",
        "args": ["-c", "ls -l"],
    }
    assert _api.stream_start_message("ls", ["-l"]) == {"type": "start", "cmd": "ls", "args": ["-l"]}
    out = PtyEvent.from_json({"type": "output", "data": base64.b64encode(b"\x1b[0mhi").decode()})
    assert out.data == b"\x1b[0mhi"
    started = PtyEvent.from_json({"type": "started", "tag": "pty-1", "pid": 5})
    assert (started.tag, started.pid) == ("pty-1", 5)
    assert _api.pty_input_message(b"ls\n") == {"type": "input", "data": base64.b64encode(b"ls\n").decode()}
    with pytest.raises(ValueError):
        _api.pty_resize_message(0, 10)
    assert _api.watch_message({"type": "start"}) is None
    assert _api.watch_message({"type": "event", "name": "a.txt", "event_type": "write"}) == FilesystemEvent(
        "a.txt", "write"
    )
    with pytest.raises(WrennNotFoundError):
        _api.watch_message({"type": "error", "code": "not_found", "data": "no such directory"})
    assert _api.watch_path("cl-x", "/a b", True) == "/v1/capsules/cl-x/files/watch?path=%2Fa+b&recursive=true"


def test_multipart_upload_frame() -> None:
    frame = _api.MultipartUpload("/data/big.bin", boundary="BOUND")
    body = frame.head + b"payload" + frame.tail
    assert frame.content_type == "multipart/form-data; boundary=BOUND"
    assert body.index(b'name="path"') < body.index(b'name="file"')
    assert body.endswith(b"payload\r\n--BOUND--\r\n")


def test_operations_run_without_io() -> None:
    """Drive multi-step operations by hand with canned responses (what the transports do)."""
    op = _api.connect_op("cl-x")
    call = next(op)
    assert call.path == "/v1/capsules/cl-x"
    call = op.send(httpx.Response(200, json={"id": "cl-x", "status": "paused"}))
    assert call.path == "/v1/capsules/cl-x/resume"
    with pytest.raises(StopIteration) as done:
        op.send(httpx.Response(200, json={"id": "cl-x", "status": "running"}))
    assert done.value.value.status == "running"

    op2 = _api.exists_op("cl-x", "/etc/hosts")
    call = next(op2)
    assert call.json == {"path": "/etc", "depth": 1}
    with pytest.raises(StopIteration) as found:
        op2.send(httpx.Response(200, json={"entries": [{"name": "hosts", "path": "/etc/hosts"}]}))
    assert found.value.value is True

    op3 = _api.exists_op("cl-x", "/nope/x")
    next(op3)
    with pytest.raises(StopIteration) as missing:
        op3.send(_error(404, "not_found"))
    assert missing.value.value is False


def test_git_parsers() -> None:
    status = parse_status(
        "## main...origin/main [ahead 2, behind 1]\n M a.py\nA  b.py\nR  old -> new\n?? c.txt\n"
    )
    assert (status.branch, status.upstream, status.ahead, status.behind) == ("main", "origin/main", 2, 1)
    assert [f.status for f in status.files] == ["modified", "added", "renamed", "untracked"]
    assert status.files[2].renamed_from == "old" and status.has_staged and not status.is_clean
    assert parse_status("## No commits yet on trunk\n").branch == "trunk"
    assert parse_status("## HEAD (no branch)\n").detached
    assert parse_branches("*\tmain\n \tdev\n") == [GitBranch("main", True), GitBranch("dev", False)]
    url = embed_credentials("https://github.com/o/r.git", "u", "t/k")
    assert url == "https://u:t%2Fk@github.com/o/r.git"
    assert strip_credentials(url) == "https://github.com/o/r.git"
    assert repo_dir_of("https://github.com/o/r.git") == "r" and repo_dir_of("git@host:o/r") == "r"


def test_json_of_decode() -> None:
    assert _api.decode_ws_text(json.dumps({"type": "ping"})) == {"type": "ping"}
