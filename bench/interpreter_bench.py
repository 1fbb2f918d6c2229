"""Benchmark the code interpreter: `run_code("1+1")` through the whole stack against the same cell sent
straight to the kernel in the guest, and the time from `Sandbox.create()` to the first `run_code` result.

Brings the platform up with `wrenn up --detach --with code-interpreter` (as `sdk_bench.py`: a private data
dir whose `images` links to the shared one, free loopback ports), then, with E2B's unmodified
`e2b-code-interpreter` pointed at it:

* create to first result: `Sandbox.create()` (template `code-interpreter-v1`, restored from the image's
  ready snapshot, whose kernel is already running) then `run_code("1+1")`, timed together and each part
  apart; `--creates` times (median of 5 by default), each sandbox killed after (untimed). The first
  capsule of the platform, which boots the image cold and makes that snapshot, is timed apart, once.
* `run_code("1+1")` on one sandbox, three paths interleaved (order rotated):
  - E2B SDK: `sandbox.run_code("1+1")`: control plane proxy -> host agent proxy -> execution server in the
    guest -> Jupyter Server -> kernel, and back as JSON lines;
  - execution server direct: `POST http://<guest>:49999/execute` from the host (no proxies);
  - kernel direct, the baseline: an `execute_request` on the kernel's WebSocket through the guest's Jupyter
    Server (`ws://<guest>:8888/api/kernels/<id>/channels`), until its `execute_reply` and `idle`.

Prints the tables and writes them, with every sample, to `bench/results/interpreter-<timestamp>.json`.
Cleanup as `sdk_bench.py` (sandboxes killed, `wrenn down`, leftovers reported).

    .venv/bin/python bench/interpreter_bench.py [--runs 30] [--creates 5] [--data-dir DIR]
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from e2b_code_interpreter import Sandbox
from httpx_ws import aconnect_ws

from _common import (
    Row,
    Series,
    guarded,
    now,
    row_table,
    series_table,
    timed,
    vm_bench_parser,
    write_results,
)
from sdk_bench import cleanup, platform_up, prepare

CELL = "1+1"


def guest_ip(base_url: str, api_key: str, sandbox_id: str) -> str:
    r = httpx.get(f"{base_url}/v1/capsules/{sandbox_id}", headers={"X-API-Key": api_key})
    r.raise_for_status()
    return str(r.json()["host_ip"])


def create_and_run(opts: dict[str, Any], sandboxes: list[Sandbox]) -> tuple[float, float]:
    began = time.perf_counter()
    sandbox = Sandbox.create(**opts)
    sandboxes.append(sandbox)
    created = time.perf_counter()
    if sandbox.run_code(CELL).text != "2":
        raise RuntimeError("run_code('1+1') did not give 2")
    return created - began, time.perf_counter() - created


def sdk_op(sandbox: Sandbox) -> Callable[[], Awaitable[None]]:
    async def op() -> None:  # the SDK is synchronous: it blocks the loop, which has nothing else to do
        if sandbox.run_code(CELL).text != "2":
            raise RuntimeError("run_code('1+1') did not give 2")

    return op


def server_op(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        r = await client.post(f"{url}/execute", json={"code": CELL})
        if '"text": "2"' not in r.text:
            raise RuntimeError(f"the execution server answered {r.status_code}: {r.text[:300]}")

    return op


def kernel_op(ws: Any, session: str) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        msg_id = uuid.uuid4().hex
        header = {"msg_id": msg_id, "username": "bench", "session": session, "msg_type": "execute_request",
                  "version": "5.3", "date": ""}  # fmt: skip
        content = {"code": CELL, "silent": False, "store_history": True, "user_expressions": {},
                   "allow_stdin": False, "stop_on_error": True}  # fmt: skip
        request = {"header": header, "parent_header": {}, "metadata": {}, "content": content,
                   "channel": "shell", "buffers": []}  # fmt: skip
        await ws.send_text(json.dumps(request))
        replied = idle = False
        while not (replied and idle):
            message = json.loads(await ws.receive_text())
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            replied = replied or message["msg_type"] == "execute_reply"
            idle = idle or (
                message["msg_type"] == "status" and message["content"]["execution_state"] == "idle"
            )

    return op


async def round_trips(sandbox: Sandbox, ip: str, runs: int, warmup: int) -> list[Row]:
    sdk_s = Series("E2B SDK run_code (proxies -> execution server -> kernel)")
    server_s = Series("execution server direct (POST :49999/execute)")
    kernel_s = Series("kernel direct (Jupyter WebSocket, :8888)")
    async with httpx.AsyncClient(timeout=60) as client:
        kernels = (await client.get(f"http://{ip}:8888/api/kernels")).json()
        kernel_id = next(k["id"] for k in kernels if k["name"] == "wrenn")
        session = uuid.uuid4().hex
        url = f"ws://{ip}:8888/api/kernels/{kernel_id}/channels?session_id={session}"
        async with aconnect_ws(url, client, keepalive_ping_interval_seconds=None) as ws:
            ops = [(sdk_s, sdk_op(sandbox)), (server_s, server_op(client, f"http://{ip}:49999")),
                   (kernel_s, kernel_op(ws, session))]  # fmt: skip
            for _ in range(warmup):
                for _, fn in ops:
                    await fn()
            for i in range(runs):
                for series, fn in ops[i % len(ops) :] + ops[: i % len(ops)]:
                    series.samples.append(await timed(fn))
    return [Row(sdk_s, kernel_s), Row(server_s, kernel_s), Row(sdk_s, server_s)]


def main(argv: list[str] | None = None) -> None:
    parser = vm_bench_parser(__doc__)
    parser.add_argument("--runs", type=int, default=30, help="measured round trips of each path (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up round trips of each path (default 3)")
    parser.add_argument("--creates", type=int, default=5, help="timed Sandbox.create + first run_code (5)")
    args = parser.parse_args(argv)
    started = now()
    state = prepare(args)
    sandboxes: list[Sandbox] = []

    def finish(failed: bool) -> None:
        for sandbox in sandboxes:
            try:
                sandbox.kill()
            except Exception as exc:  # `wrenn down` destroys it anyway
                print(f"killing {sandbox.sandbox_id} failed: {exc!r}", file=sys.stderr)
        cleanup(state, keep_dir=failed)

    with guarded(state, finish):
        saved = platform_up(state, "--with", "code-interpreter")
        opts = {"api_key": saved["api_key"], "api_url": saved["base_url"], "sandbox_url": saved["base_url"],
                "request_timeout": 600}  # fmt: skip
        cold = create_and_run(opts, sandboxes)  # boots the image and makes its ready snapshot
        sandboxes.pop().kill()
        total, create, first = (
            Series("Sandbox.create() -> first run_code result"),
            Series("Sandbox.create()"),
            Series("first run_code('1+1')"),
        )
        for _ in range(args.creates):
            c, f = create_and_run(opts, sandboxes)
            sandboxes.pop().kill()
            create.samples.append(c)
            first.samples.append(f)
            total.samples.append(c + f)
        sandbox = Sandbox.create(**opts)
        sandboxes.append(sandbox)
        ip = guest_ip(saved["base_url"], saved["api_key"], sandbox.sandbox_id)
        rows = asyncio.run(round_trips(sandbox, ip, args.runs, args.warmup))
    print(f"first capsule of the platform (cold boot + ready snapshot): create {cold[0]:.2f} s, "
          f"first run_code {cold[1]:.2f} s")  # fmt: skip
    print(series_table([total, create, first], title="from the ready snapshot"))
    print(row_table(rows, added=True))
    report = {
        "config": {"runs": args.runs, "warmup": args.warmup, "creates": args.creates, "cell": CELL},
        "cold_first_capsule_s": {"create": cold[0], "first_run_code": cold[1]},
        "create_to_first_result": [s.summary() for s in (total, create, first)],
        "rows": [r.to_json() for r in rows],
    }
    write_results("interpreter", started, report)


if __name__ == "__main__":
    main()
