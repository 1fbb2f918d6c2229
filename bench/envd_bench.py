"""Benchmark envd on loopback against same-machine baselines.

Starts `python -m wrenn.envd --dev` as a real process on 127.0.0.1, then measures, each next to a baseline
taken in the same run on the same machine:

* exec round trip of `true` (Connect `process.Process/Start`, JSON codec, until the stream ends)
  vs. a bare HTTP round trip (`GET /health` on the same pyqwest client and connection pool) and
  vs. spawning `true` directly (`asyncio.create_subprocess_exec` + `wait`);
* a streamed octet-stream upload (`POST /files`) and a streamed download (`GET /files`) of an N MB file
  vs. `shutil.copyfile` of the same file on the same disk.

Prints a table (median, p90, baseline median, ratio op/baseline, MB/s) and writes the same data, with every
sample, to `bench/results/envd-<timestamp>.json`.

    .venv/bin/python bench/envd_bench.py [--runs 15] [--transfer-runs 5] [--size-mb 100]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyqwest
from connectrpc.codec import proto_json_codec

import _common
from _common import REPO, Series, envd_start, fmt_time, free_port, now, render_table, timed, write_results
from wrenn.proto.envd.process.process_connect import ProcessClient

CHUNK = 1 << 20  # client-side read/write size for the transfers
MB = 1_000_000  # MB/s is reported in decimal megabytes


# --- the table -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Row(_common.Row):
    nbytes: int | None = None  # set for transfers: MB/s is then reported

    def mbps(self, seconds: float) -> float | None:
        return None if self.nbytes is None else self.nbytes / MB / seconds

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "bytes": self.nbytes,
            "mb_per_s": self.mbps(self.op.median),
            "baseline_mb_per_s": self.mbps(self.baseline.median),
        }


def table(rows: list[Row]) -> str:
    header = ["operation", "median", "p90", "baseline", "base median", "ratio", "MB/s", "base MB/s"]
    lines: list[list[str]] = []
    for r in rows:
        mbps, base_mbps = r.mbps(r.op.median), r.mbps(r.baseline.median)
        lines.append(
            [
                r.op.name,
                fmt_time(r.op.median),
                fmt_time(r.op.p90),
                r.baseline.name,
                fmt_time(r.baseline.median),
                f"{r.ratio:.2f}x",
                "" if mbps is None else f"{mbps:.0f}",
                "" if base_mbps is None else f"{base_mbps:.0f}",
            ]
        )
    return render_table(header, lines, {1, 2, 4, 5, 6, 7})


# --- envd as a real process ----------------------------------------------------------------------


@contextlib.contextmanager
def run_envd(log_path: Path, profile: Path | None) -> Iterator[str]:
    """Start envd on a free loopback port, wait for /health, and stop it (SIGTERM, then SIGKILL) on exit."""
    port = free_port()
    cmd = [sys.executable]
    if profile is not None:  # cProfile writes its stats when envd exits normally (SIGTERM -> graceful)
        cmd += ["-m", "cProfile", "-o", str(profile.resolve())]
    cmd += ["-m", "wrenn.envd", "--dev", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    pythonpath = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": pythonpath}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                log_text = log_path.read_text()
                raise RuntimeError(f"envd exited with {proc.returncode} on start; log:\n{log_text}")
            try:
                if httpx.get(f"{url}/health", timeout=1).is_success:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"envd did not answer /health within 30 s; log:\n{log_path.read_text()}")
            time.sleep(0.05)
        yield url
    finally:
        # uvicorn shuts down gracefully on either signal, then re-raises it: SIGTERM kills the process
        # before cProfile can write its stats, SIGINT becomes a KeyboardInterrupt that cProfile outlives.
        stop = signal.SIGTERM if profile is None else signal.SIGINT
        if proc.poll() is None:
            proc.send_signal(stop)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"envd did not stop within 15 s of {stop.name}; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()
        if proc.returncode not in (0, 1, -stop):
            print(f"envd exited with {proc.returncode}; log: {log_path}", file=sys.stderr)


# --- the operations ------------------------------------------------------------------------------


def health(http: pyqwest.Client, url: str) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        response = await http.get(f"{url}/health")
        if not 200 <= response.status < 300:
            raise RuntimeError(f"GET /health answered {response.status}")

    return op


async def spawn_true() -> None:
    proc = await asyncio.create_subprocess_exec("true")
    if await proc.wait() != 0:
        raise RuntimeError("`true` failed")


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def upload(http: httpx.AsyncClient, url: str, src: Path, dest: Path) -> Callable[[], Awaitable[None]]:
    size = src.stat().st_size

    async def op() -> None:
        response = await http.post(
            f"{url}/files",
            params={"path": str(dest)},
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            content=_file_chunks(src),
        )
        if response.status_code != 200:
            raise RuntimeError(f"POST /files answered {response.status_code}: {response.text[:500]}")

    return op


def download(
    http: httpx.AsyncClient, url: str, src: Path, dest: Path, *, identity: bool
) -> Callable[[], Awaitable[None]]:
    """Stream `src` from envd to `dest`.

    `identity=False` sends `Accept-Encoding: gzip`, what E2B's SDK sends for `files.read(gzip=True)`,
    and writes the decoded body: envd compresses the stream (a generic client's default list such as
    `gzip, deflate` gets the file uncompressed).
    """
    headers = {"Accept-Encoding": "identity" if identity else "gzip"}

    async def op() -> None:
        async with http.stream("GET", f"{url}/files", params={"path": str(src)}, headers=headers) as response:
            if response.status_code != 200:
                await response.aread()
                raise RuntimeError(f"GET /files answered {response.status_code}: {response.text[:500]}")
            with open(dest, "wb") as f:
                async for chunk in response.aiter_bytes():
                    f.write(chunk)

    return op


def copy(src: Path, dest: Path) -> Callable[[], Awaitable[None]]:
    async def op() -> None:
        shutil.copyfile(src, dest)

    return op


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- the runs ------------------------------------------------------------------------------------


async def bench_exec(url: str, runs: int) -> list[Row]:
    exec_s = Series("exec `true` (Start stream)")
    health_s = Series("GET /health (same client)")
    spawn_s = Series("spawn `true` (asyncio)")
    # One pyqwest client (connection pool, keep-alive) for both the RPC and the bare HTTP baseline; JSON codec
    # and no compression, as E2B's SDK configures its envd clients (e2b/envd/client_async, client_shared).
    http = pyqwest.Client()
    async with ProcessClient(
        url, codec=proto_json_codec(), send_compression=None, accept_compression=(), http_client=http
    ) as client:
        ops = [(exec_s, envd_start(client, "true", [])), (health_s, health(http, url)), (spawn_s, spawn_true)]
        for _, fn in ops:  # warm-up: connection, imports, first-call paths on both sides
            await fn()
        for _ in range(runs):  # interleaved, so drift hits op and baselines alike
            for series, fn in ops:
                series.samples.append(await timed(fn))
    return [Row(exec_s, health_s), Row(exec_s, spawn_s)]


async def bench_transfers(url: str, runs: int, size_mb: int, workdir: Path) -> list[Row]:
    nbytes = size_mb * MB
    src = workdir / "source.bin"
    with open(src, "wb") as f:  # incompressible, written once; stays in the page cache for every run
        for _ in range(nbytes // CHUNK):
            f.write(os.urandom(CHUNK))
        f.write(os.urandom(nbytes % CHUNK))
    uploaded, copied = workdir / "uploaded.bin", workdir / "copied.bin"
    downloaded, downloaded_gz = workdir / "downloaded.bin", workdir / "downloaded-gzip.bin"
    up_s = Series(f"upload {size_mb} MB (POST /files)")
    down_s = Series(f"download {size_mb} MB (GET /files)")
    down_gz_s = Series(f"download {size_mb} MB, gzip (random data)")
    copy_s = Series(f"copyfile {size_mb} MB")
    async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as http:
        ops = [
            (up_s, uploaded, upload(http, url, src, uploaded)),
            (down_s, downloaded, download(http, url, src, downloaded, identity=True)),
            (down_gz_s, downloaded_gz, download(http, url, src, downloaded_gz, identity=False)),
            (copy_s, copied, copy(src, copied)),
        ]
        for _, dest, fn in ops:  # warm-up, and a correctness check of each path
            dest.unlink(missing_ok=True)
            await fn()
        digest = sha256(src)
        for _, dest, _fn in ops:
            if sha256(dest) != digest:
                raise RuntimeError(f"{dest.name} differs from the source after the warm-up transfer")
        for _ in range(runs):
            for series, dest, fn in ops:
                dest.unlink(missing_ok=True)  # every run writes a fresh file, outside the timing
                series.samples.append(await timed(fn))
                if dest.stat().st_size != nbytes:
                    raise RuntimeError(f"{series.name}: {dest.stat().st_size} bytes, expected {nbytes}")
    return [Row(up_s, copy_s, nbytes), Row(down_s, copy_s, nbytes), Row(down_gz_s, copy_s, nbytes)]


async def main_async(args: argparse.Namespace, url: str, workdir: Path) -> list[Row]:
    rows = await bench_exec(url, args.runs)
    if args.size_mb > 0:
        rows += await bench_transfers(url, args.transfer_runs, args.size_mb, workdir)
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=15, help="runs of the small ops (default 15)")
    parser.add_argument("--transfer-runs", type=int, default=5, help="runs of the transfers (default 5)")
    parser.add_argument("--size-mb", type=int, default=100, help="transfer size, MB; 0 skips (default 100)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="dir for the transfer files (default $TMPDIR)"
    )
    parser.add_argument(
        "--envd-profile", type=Path, default=None, help="run envd under cProfile, stats to FILE"
    )
    args = parser.parse_args(argv)
    if args.runs < 1 or args.transfer_runs < 1:
        parser.error("--runs and --transfer-runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = now()
    with tempfile.TemporaryDirectory(prefix="envd-bench-", dir=args.workdir) as tmp:
        workdir = Path(tmp)
        with run_envd(workdir / "envd.log", args.envd_profile) as url:
            rows = asyncio.run(main_async(args, url, workdir))
    print(table(rows))
    report = {
        "config": {
            "runs": args.runs,
            "transfer_runs": args.transfer_runs,
            "size_mb": args.size_mb,
            "statistic": "median, p90 of runs after a warm-up; ratio = op median / baseline median",
        },
        "rows": [r.to_json() for r in rows],
    }
    write_results("envd", started, report)
    if args.envd_profile is not None:
        print(f"envd profile: {args.envd_profile} (python -m pstats {args.envd_profile})")


if __name__ == "__main__":
    main()
