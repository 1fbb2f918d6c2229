"""process.Process over Connect (JSON), against a real envd process."""

from __future__ import annotations

import asyncio
import os
import re

import httpx
import pytest
from connectrpc.errors import ConnectError
from protobuf import Oneof

from tests.conftest import Envd
from wrenn.proto.envd.process.process_pb import (
    PTY,
    CloseStdinRequest,
    ConnectRequest,
    ListRequest,
    ProcessInput,
    SendInputRequest,
    SendSignalRequest,
    Signal,
    StreamInputRequest,
    UpdateRequest,
)

from ._rpc import (
    by_pid,
    by_tag,
    code_of,
    collect,
    eventually,
    headers,
    open_fds,
    pid_alive,
    process_client,
    run,
    sh,
    start_request,
)


async def test_start_streams_start_then_output_then_end(envd: Envd) -> None:
    out = await sh(envd, "echo out; echo err >&2; exit 3")
    assert out.kinds[0] == "start" and out.kinds[-1] == "end"
    assert out.pid > 0
    assert out.stdout == b"out\n"
    assert out.stderr == b"err\n"
    assert (out.exit_code, out.exited, out.status) == (3, True, "exit status 3")


async def test_runs_as_default_user_unless_another_is_asked(envd: Envd) -> None:
    assert (await run(envd, "whoami")).stdout.decode().strip() == envd.user
    assert (await run(envd, "whoami", user="root")).stdout.decode().strip() == "root"
    out = await sh(envd, 'echo "$HOME $USER"')
    assert out.stdout.decode().split() == [f"/home/{envd.user}", envd.user]


async def test_unknown_user_is_unauthenticated(envd: Envd) -> None:
    with pytest.raises(ConnectError) as err:
        await run(envd, "true", user="no-such-user")
    assert code_of(err.value) == "unauthenticated"
    assert "no-such-user" in err.value.message


async def test_env_and_cwd(envd: Envd, workdir: os.PathLike[str]) -> None:
    out = await sh(envd, 'echo "$WRENN_TEST $MINE"; pwd', envs={"MINE": "x y"}, cwd=str(workdir))
    assert out.stdout.decode().splitlines() == ["1 x y", str(workdir)]
    # without a cwd, the default workdir from /init
    assert (await run(envd, "pwd")).stdout.decode().strip() == str(envd.workdir)


async def test_bad_cwd_and_missing_command_are_invalid_arguments(envd: Envd) -> None:
    for kwargs in ({"cwd": "/no/such/dir"}, {"cwd": "../x"}):
        with pytest.raises(ConnectError) as err:
            await run(envd, "true", **kwargs)
        assert code_of(err.value) == "invalid_argument", kwargs
    with pytest.raises(ConnectError) as err:
        await run(envd, "/no/such/binary")
    assert code_of(err.value) == "invalid_argument"
    assert "/no/such/binary" in err.value.message
    with pytest.raises(ConnectError) as err:
        await run(envd, "")
    assert code_of(err.value) == "invalid_argument"


async def _first_start(stream: object) -> int:
    async for response in stream:  # type: ignore[attr-defined]
        assert response.event.event.field == "start"
        return int(response.event.event.value.pid)
    raise AssertionError("no start event")


async def test_stdin_send_and_close(envd: Envd) -> None:
    async with process_client(envd) as client:
        stream = client.start(start_request("cat", stdin=True), headers=headers(envd), timeout_ms=30_000)
        it = aiter(stream)
        first = await anext(it)
        pid = first.event.event.value.pid  # type: ignore[union-attr]
        await client.send_input(
            SendInputRequest(process=by_pid(pid), input=ProcessInput(input=Oneof("stdin", b"hello\n"))),
            headers=headers(envd),
        )
        await client.close_stdin(CloseStdinRequest(process=by_pid(pid)), headers=headers(envd))
        rest = await collect(it)
    assert rest.stdout == b"hello\n"
    assert (rest.exit_code, rest.exited) == (0, True)


async def test_stream_input_keeps_order(envd: Envd) -> None:
    async with process_client(envd) as client:
        it = aiter(client.start(start_request("cat", stdin=True), headers=headers(envd), timeout_ms=30_000))
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]

        async def messages():  # type: ignore[no-untyped-def]
            yield StreamInputRequest(event=Oneof("start", StreamInputRequest.StartEvent(process=by_pid(pid))))
            for i in range(50):
                data = StreamInputRequest.DataEvent(
                    input=ProcessInput(input=Oneof("stdin", f"{i}\n".encode()))
                )
                yield StreamInputRequest(event=Oneof("data", data))

        await client.stream_input(messages(), headers=headers(envd))
        await client.close_stdin(CloseStdinRequest(process=by_pid(pid)), headers=headers(envd))
        rest = await collect(it)
    assert rest.stdout.decode().split() == [str(i) for i in range(50)]


async def test_stdin_disabled_is_a_failed_precondition(envd: Envd) -> None:
    async with process_client(envd) as client:
        it = aiter(client.start(start_request("sleep", "30"), headers=headers(envd), timeout_ms=30_000))
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]
        with pytest.raises(ConnectError) as err:
            await client.send_input(
                SendInputRequest(process=by_pid(pid), input=ProcessInput(input=Oneof("stdin", b"x"))),
                headers=headers(envd),
            )
        assert code_of(err.value) == "failed_precondition"
        for bad in (
            client.update(
                UpdateRequest(process=by_pid(pid), pty=PTY(size=PTY.Size(cols=10, rows=10))),
                headers=headers(envd),
            ),
        ):
            with pytest.raises(ConnectError) as err:
                await bad
            assert code_of(err.value) == "failed_precondition"
        await client.send_signal(
            SendSignalRequest(process=by_pid(pid), signal=Signal.SIGKILL), headers=headers(envd)
        )
        rest = await collect(it)
    assert (rest.exited, rest.status) == (False, "signal: killed")


async def test_dropped_stream_keeps_the_process_and_connect_reattaches(envd: Envd) -> None:
    script = "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"
    async with process_client(envd) as client:
        stream = client.start(start_request("/bin/sh", "-c", script, tag="ticker"), headers=headers(envd))
        it = aiter(stream)
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]
        await anext(it)  # some output
        await it.aclose()  # drop the stream
    await asyncio.sleep(0.5)
    assert pid_alive(pid)
    async with process_client(envd) as client:
        listed = await client.list(ListRequest(), headers=headers(envd))
        assert any(p.pid == pid and p.tag == "ticker" for p in listed.processes)
        it = aiter(client.connect(ConnectRequest(process=by_tag("ticker")), headers=headers(envd)))
        first = await anext(it)
        assert first.event.event.field == "start" and first.event.event.value.pid == pid  # type: ignore[union-attr]
        data = await anext(it)
        assert data.event.event.field == "data" and b"tick" in data.event.event.value.output.value  # type: ignore[union-attr]
        await client.send_signal(
            SendSignalRequest(process=by_tag("ticker"), signal=Signal.SIGTERM), headers=headers(envd)
        )
        kinds = [r.event.event.field async for r in it]  # type: ignore[union-attr]
    assert kinds[-1] == "end"
    assert not pid_alive(pid)


async def test_a_late_connect_still_gets_the_end(envd: Envd) -> None:
    out = await sh(envd, "exit 7")
    async with process_client(envd) as client:
        rest = await collect(client.connect(ConnectRequest(process=by_pid(out.pid)), headers=headers(envd)))
        listed = await client.list(ListRequest(), headers=headers(envd))
    assert rest.kinds == ["start", "end"] and rest.exit_code == 7
    assert all(p.pid != out.pid for p in listed.processes)  # exited processes are not listed


async def test_signal_reaches_the_whole_process_group(envd: Envd) -> None:
    async with process_client(envd) as client:
        it = aiter(
            client.start(start_request("/bin/sh", "-c", "sleep 1000 & echo $!; wait"), headers=headers(envd))
        )
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]
        child = int((await anext(it)).event.event.value.output.value)  # type: ignore[union-attr]
        assert pid_alive(child)
        await client.send_signal(
            SendSignalRequest(process=by_pid(pid), signal=Signal.SIGKILL), headers=headers(envd)
        )
        await collect(it)
    assert eventually(lambda: not pid_alive(child), timeout=5)


async def test_start_deadline_is_the_process_lifetime(envd: Envd) -> None:
    async with process_client(envd) as client:
        stream = client.start(
            start_request("sleep", "30", tag="deadline"), headers=headers(envd), timeout_ms=700
        )
        with pytest.raises(ConnectError) as err:
            await collect(stream)
        assert code_of(err.value) == "deadline_exceeded"

        async def gone() -> bool:
            listed = await client.list(ListRequest(), headers=headers(envd))
            return all(p.tag != "deadline" for p in listed.processes)

        for _ in range(50):
            if await gone():
                break
            await asyncio.sleep(0.1)
        assert await gone()


async def test_keepalives_at_the_requested_interval(envd: Envd) -> None:
    async with process_client(envd) as client:
        result = await collect(
            client.start(
                start_request("sleep", "2.5"), headers=headers(envd, **{"Keepalive-Ping-Interval": "1"})
            )
        )
    assert result.kinds[0] == "start" and result.kinds[-1] == "end"
    assert result.kinds.count("keepalive") >= 1


async def test_pty_size_resize_and_exit(envd: Envd) -> None:
    async with process_client(envd) as client:
        stream = client.start(
            start_request(
                "/bin/bash",
                "-i",
                envs={"TERM": "xterm", "PS1": "$ "},
                pty=PTY(size=PTY.Size(cols=80, rows=24)),
            ),
            headers=headers(envd),
        )
        it = aiter(stream)
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]
        seen = b""

        async def until(pattern: bytes) -> None:
            nonlocal seen
            while not re.search(pattern, seen):
                response = await asyncio.wait_for(anext(it), 10)
                event = response.event.event  # type: ignore[union-attr]
                if event.field == "data":
                    assert event.value.output.field == "pty"
                    seen += event.value.output.value

        async def send(text: bytes) -> None:
            await client.send_input(
                SendInputRequest(process=by_pid(pid), input=ProcessInput(input=Oneof("pty", text))),
                headers=headers(envd),
            )

        await send(b"tty; stty size\n")
        await until(rb"24 80")
        assert b"/dev/pts/" in seen
        await client.update(
            UpdateRequest(process=by_pid(pid), pty=PTY(size=PTY.Size(cols=100, rows=30))),
            headers=headers(envd),
        )
        await send(b"stty size\n")
        await until(rb"30 100")
        with pytest.raises(ConnectError) as err:
            await client.close_stdin(CloseStdinRequest(process=by_pid(pid)), headers=headers(envd))
        assert code_of(err.value) == "failed_precondition"
        await send(b"exit 5\n")
        rest = await collect(it)
    assert rest.exit_code == 5


async def test_selectors_and_signals_are_validated(envd: Envd) -> None:
    async with process_client(envd) as client:
        calls = {
            "not_found": [
                client.send_signal(
                    SendSignalRequest(process=by_pid(999_999), signal=Signal.SIGKILL), headers=headers(envd)
                ),
                client.send_signal(
                    SendSignalRequest(process=by_tag("nope"), signal=Signal.SIGKILL), headers=headers(envd)
                ),
                client.close_stdin(CloseStdinRequest(process=by_pid(999_999)), headers=headers(envd)),
                collect(client.connect(ConnectRequest(process=by_pid(999_999)), headers=headers(envd))),
            ],
            "invalid_argument": [
                client.send_signal(
                    SendSignalRequest(process=by_pid(1), signal=Signal.UNSPECIFIED), headers=headers(envd)
                ),
                client.close_stdin(CloseStdinRequest(), headers=headers(envd)),
            ],
        }
        for code, coros in calls.items():
            for coro in coros:
                with pytest.raises(ConnectError) as err:
                    await coro
                assert code_of(err.value) == code, err.value.message


async def test_a_running_tag_is_unique(envd: Envd) -> None:
    async with process_client(envd) as client:
        it = aiter(client.start(start_request("sleep", "30", tag="only-one"), headers=headers(envd)))
        pid = (await anext(it)).event.event.value.pid  # type: ignore[union-attr]
        with pytest.raises(ConnectError) as err:
            await collect(client.start(start_request("true", tag="only-one"), headers=headers(envd)))
        assert code_of(err.value) == "already_exists"
        await client.send_signal(
            SendSignalRequest(process=by_pid(pid), signal=Signal.SIGKILL), headers=headers(envd)
        )
        await collect(it)


def test_malformed_requests_are_rejected_cleanly(envd: Envd) -> None:
    url = f"{envd.url}/process.Process/List"
    h = {**envd.headers, "Content-Type": "application/json"}
    bad_json = httpx.post(url, content=b"{not json", headers=h)
    assert bad_json.status_code == 400 and bad_json.json()["code"] == "invalid_argument"
    bad_proto = httpx.post(
        url, content=b"\xff\xff\xff", headers={**envd.headers, "Content-Type": "application/proto"}
    )
    assert bad_proto.status_code == 400 and bad_proto.json()["code"] == "invalid_argument"
    unknown = httpx.post(f"{envd.url}/process.Process/Nope", content=b"{}", headers=h)
    assert unknown.status_code == 404
    assert httpx.get(f"{envd.url}/health").status_code == 204  # still alive


async def test_no_fd_or_process_leaks(envd: Envd) -> None:
    async def batch() -> None:
        for i in range(10):
            await sh(envd, f"echo {i}")
            await run(envd, "/bin/true", pty=PTY(size=PTY.Size(cols=80, rows=24)))

    await batch()  # warm up: connection pools, caches
    before = open_fds(envd.proc.pid)
    await batch()
    assert eventually(lambda: open_fds(envd.proc.pid) <= before, timeout=5), (before, open_fds(envd.proc.pid))
    with open(f"/proc/{envd.proc.pid}/task/{envd.proc.pid}/children") as f:
        children = [int(pid) for pid in f.read().split()]
    assert [pid for pid in children if pid_alive(pid)] == []
