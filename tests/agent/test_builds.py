"""Template builds on a real host agent with real VMs: steps run in a build VM, each step's disk cached by its
inputs, the start command running in the ready snapshot that sandboxes of the template restore."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import uuid
from collections.abc import Iterator

import pytest
from connectrpc.errors import ConnectError
from protobuf import Oneof

from tests.agent._agent import AgentProcess, running_agent
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

pytestmark = [pytest.mark.vm, pytest.mark.skipif(os.geteuid() != 0, reason="needs root (VMs)")]


@pytest.fixture(scope="module")
def agent(image: object) -> Iterator[AgentProcess]:
    with running_agent(f"tb{os.getpid() % 1000:03d}a") as process:
        yield process


def _archive(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _put(agent: AgentProcess, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    meta = pb.PutBuildFileRequest(content=Oneof("meta", pb.PutBuildFileMeta(sha256=digest, size=len(data))))  # type: ignore[arg-type]
    chunk = pb.PutBuildFileRequest(content=Oneof("chunk", data))  # type: ignore[arg-type]
    with agent.sync_client() as client:
        client.put_build_file(iter([meta, chunk]))
    return digest


def _build(
    agent: AgentProcess, request: pb.BuildTemplateRequest
) -> tuple[pb.BuiltTemplate | None, list[pb.BuildLog], str]:
    logs: list[pb.BuildLog] = []
    built, error = None, ""
    with agent.sync_client() as client:
        try:
            for response in client.build_template(request, timeout_ms=1_200_000):
                event = response.event
                if event is None:
                    continue
                if event.field == "log":
                    logs.append(event.value)  # type: ignore[arg-type]
                elif event.field == "result":
                    built = event.value  # type: ignore[assignment]
        except ConnectError as exc:
            error = exc.message
    return built, logs, error


def _steps(archive_sha: str, marker: str) -> list[pb.BuildStep]:
    return [
        pb.BuildStep(type="ENV", args=["GREETING", "hello from the template"]),
        pb.BuildStep(type="WORKDIR", args=["/home/user/app"]),
        pb.BuildStep(
            type="COPY",
            args=["server.py", "/home/user/app/", "user", "0755"],
            file_sha256=archive_sha,
            files_hash="f" * 64,
        ),
        pb.BuildStep(type="RUN", args=[f"echo {marker} > marker.txt; echo built $GREETING"]),
    ]


def test_build_cache_and_start_from_template(agent: AgentProcess) -> None:
    server = b"import http.server\nhttp.server.test(HandlerClass=http.server.SimpleHTTPRequestHandler, port=8000)\n"
    archive = _put(agent, _archive({"server.py": server}))

    def request(marker: str) -> pb.BuildTemplateRequest:
        return pb.BuildTemplateRequest(
            build_id=str(uuid.uuid4()),
            team_id="team-a",
            base=Oneof("image", "minimal"),  # type: ignore[arg-type]
            steps=_steps(archive, marker),
            start_cmd="python3 /home/user/app/server.py",
            ready_cmd='[ -n "$(ss -Htuln sport = :8000)" ]',
            ready_timeout_sec=120,
            disk_size_mb=2048,
        )

    built, logs, error = _build(agent, request("one"))
    text = "\n".join(f"[{e.step}] {e.message}" for e in logs)
    assert built is not None, f"{error}\n{text}"
    assert "built hello from the template" in text
    assert built.workdir == "/home/user/app" and built.env["GREETING"] == "hello from the template"
    assert len(built.disk) == 2 and built.vmstate and built.memory

    # The same steps again, the last one changed: the first three come from the cache.
    built2, logs2, error2 = _build(agent, request("two"))
    text2 = "\n".join(e.message for e in logs2)
    assert built2 is not None, f"{error2}\n{text2}"
    assert text2.count("CACHED") == 3, text2 + agent.log.read_text()[-6000:]

    # A sandbox of the template: restored with the server already answering, files and modes in place.
    with agent.sync_client() as client:
        client.create_sandbox(
            pb.CreateSandboxRequest(
                sandbox_id="tb-one", snapshot_template=built.build_id, built_template=built,
                vcpus=built.vcpus, memory_mb=built.memory_mb, disk_size_mb=built.disk_size_mb,
            ),
            timeout_ms=600_000,
        )  # fmt: skip
        try:
            run = client.exec(
                pb.ExecRequest(
                    sandbox_id="tb-one", cmd="/bin/sh",
                    args=["-c", "curl -s localhost:8000/ | head -c 200; stat -c %a:%U server.py; cat marker.txt; pwd; echo $GREETING"],
                ),
                timeout_ms=60_000,
            )  # fmt: skip
            out = run.stdout.decode()
            assert "Directory listing" in out and "755:user" in out and "one" in out, out
            assert "/home/user/app" in out and "hello from the template" in out, out
        finally:
            client.destroy_sandbox(pb.DestroySandboxRequest(sandbox_id="tb-one"))


def test_failing_step_names_itself(agent: AgentProcess) -> None:
    request = pb.BuildTemplateRequest(
        build_id=str(uuid.uuid4()),
        team_id="team-a",
        base=Oneof("image", "minimal"),  # type: ignore[arg-type]
        steps=[pb.BuildStep(type="RUN", args=["echo about to fail; exit 3"])],
        disk_size_mb=2048,
    )
    built, logs, error = _build(agent, request)
    assert built is None
    assert "step 1" in error and "exit code 3" in error and "about to fail" in error, error
    assert any(e.level == "error" and e.step == "1" for e in logs)
