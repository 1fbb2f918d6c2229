"""How long a small template takes to build, and how fast capsules of it start against the base image's.

Starts a real host agent (its own data dir over the shared images, name prefix and address ranges) and
drives its build RPCs directly (the control plane adds only its queue and log table):

* cold build: `BuildTemplate` of a small template over `minimal` (ENV, WORKDIR, COPY of a small archive,
  RUN, a start command `python3 -m http.server 8000` and the ready command `wait_for_port(8000)` sends),
  with `force` (no cache), from the request until the result: the build VM's boot, each step and its layer,
  the start and ready commands, the snapshot and publishing the blobs;
* rebuild, last step changed: the same with its RUN changed, the steps before it from the cache (a new
  build VM boots over the cached disk);
* create -> first command, in `--runs` interleaved rounds: `CreateSandbox` of the built template (its
  ready snapshot restored, the start command's server already up) + `Exec true`, against the base image's
  (`minimal`'s ready snapshot of the same shape, made by one untimed create first) + `Exec true`.

Writes every sample to `bench/results/template-<timestamp>.json`; cleans up whatever way the run ends.

    .venv/bin/python bench/template_bench.py [--runs 5] [--data-dir /var/tmp/wrenn-test-data]
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import sys
import tarfile
import time
import uuid

from protobuf import Oneof

from _common import (
    Row,
    Series,
    agent_client,
    agent_create,
    agent_destroy,
    agent_running,
    host_accelerator,
    prepare_run,
    row_table,
    series_table,
    vm_bench_parser,
    write_results,
)
from wrenn.proto.hostagent.v1 import hostagent_pb as pb
from wrenn.proto.hostagent.v1.hostagent_connect import HostAgentServiceClient

SHAPE = {"vcpus": 1, "memory_mb": 512, "disk_size_mb": 2048}


def _archive() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        data = b"<h1>a template</h1>\n"
        info = tarfile.TarInfo("site/index.html")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _request(archive: str, marker: str, force: bool) -> pb.BuildTemplateRequest:
    return pb.BuildTemplateRequest(
        build_id=str(uuid.uuid4()),
        team_id="bench",
        base=Oneof("image", "minimal"),  # type: ignore[arg-type]
        steps=[
            pb.BuildStep(type="ENV", args=["GREETING", "hello"]),
            pb.BuildStep(type="WORKDIR", args=["/home/user/site"]),
            pb.BuildStep(type="COPY", args=["site", "/home/user/site", "user", ""], file_sha256=archive),
            pb.BuildStep(type="RUN", args=[f"echo {marker} > marker.txt"]),
        ],
        start_cmd="python3 -m http.server 8000",
        ready_cmd='[ -n "$(ss -Htuln sport = :8000)" ]',
        force=force,
        **SHAPE,
    )


async def _build(
    client: HostAgentServiceClient, request: pb.BuildTemplateRequest
) -> tuple[float, pb.BuiltTemplate]:
    started = time.perf_counter()
    result = None
    async for response in client.build_template(request, timeout_ms=1_800_000):
        event = response.event
        if event is not None and event.field == "result":
            result = event.value
    if result is None:
        raise RuntimeError("the build ended without a result")
    return time.perf_counter() - started, result  # type: ignore[return-value]


async def main() -> None:
    parser = vm_bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=5, help="create rounds (default 5)")
    args = parser.parse_args()
    _, started, run = prepare_run(args, "template", f"tb{os.getpid() % 1000:03d}z")
    with agent_running(run):
        client = agent_client(run)
        _, host = await host_accelerator(client)
        data = _archive()
        digest = hashlib.sha256(data).hexdigest()
        meta = pb.PutBuildFileMeta(sha256=digest, size=len(data))

        async def chunks():  # type: ignore[no-untyped-def]
            yield pb.PutBuildFileRequest(content=Oneof("meta", meta))  # type: ignore[arg-type]
            yield pb.PutBuildFileRequest(content=Oneof("chunk", data))  # type: ignore[arg-type]

        await client.put_build_file(chunks())
        cold_s, _ = await _build(client, _request(digest, "one", force=True))
        print(f"cold build: {cold_s:.1f} s", file=sys.stderr)
        warm_s, built = await _build(client, _request(digest, "two", force=False))
        print(f"rebuild, last step changed: {warm_s:.1f} s", file=sys.stderr)

        base_req = {"template": "minimal", **SHAPE}
        await agent_create(client, run, pb.CreateSandboxRequest(sandbox_id="tb-warm", **base_req))  # type: ignore[arg-type]
        await agent_destroy(client, run, "tb-warm")
        template = Series("built template -> first command")
        image = Series("base image (ready snapshot) -> first command")
        for index in range(args.runs):
            kinds = [("t", template), ("i", image)]
            for kind, series in kinds if index % 2 == 0 else reversed(kinds):
                sandbox_id = f"tb-{kind}{index}"
                if kind == "t":
                    request = pb.CreateSandboxRequest(
                        sandbox_id=sandbox_id, snapshot_template=built.build_id, built_template=built, **SHAPE
                    )
                else:
                    request = pb.CreateSandboxRequest(sandbox_id=sandbox_id, **base_req)  # type: ignore[arg-type]
                t0 = time.perf_counter()
                await agent_create(client, run, request)
                await client.exec(pb.ExecRequest(sandbox_id=sandbox_id, cmd="true"), timeout_ms=60_000)
                series.samples.append(time.perf_counter() - t0)
                await agent_destroy(client, run, sandbox_id)
        builds = [Series("cold build (no cache)", [cold_s]), Series("rebuild, last step changed", [warm_s])]
        print(series_table(builds, title="build"))
        print(row_table([Row(template, image)]))
        write_results(
            "template",
            started,
            {
                "host": host,
                "builds": [s.summary() for s in builds],
                "creates": Row(template, image).to_json(),
                "blob_bytes": built.size_bytes,
            },
        )


if __name__ == "__main__":
    asyncio.run(main())
