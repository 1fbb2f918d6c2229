"""GET and POST /files against a real envd process."""

from __future__ import annotations

import gzip
import hashlib
import os
import socket
import threading
import time
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil

from tests.conftest import Envd


def _signature(path: str, op: str, user: str, token: str, expires: int | None = None) -> str:
    payload = f"{path}:{op}:{user}:{token}" + (f":{expires}" if expires is not None else "")
    return "v1_" + b64encode(hashlib.sha256(payload.encode()).digest()).decode().rstrip("=")


def _leftovers(directory: Path) -> list[str]:
    """Files an upload left beside its target: none, since uploads are written in place."""
    return [p.name for p in directory.rglob(".*")]


def test_multipart_upload_one_file_creates_parents_and_owns_it(envd: Envd, workdir: Path) -> None:
    target = workdir / "new" / "dir" / "a.txt"
    with envd.client() as c:
        r = c.post("/files", params={"path": str(target)}, files={"file": ("a.txt", b"abc", "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json() == [{"name": "a.txt", "type": "file", "path": str(target)}]
    assert target.read_bytes() == b"abc"
    assert target.owner() == envd.user and (workdir / "new").owner() == envd.user
    assert _leftovers(workdir) == []


def test_two_parts_for_one_path_are_refused(envd: Envd, workdir: Path) -> None:
    target = str(workdir / "twice.txt")
    with envd.client() as c:
        r = c.post("/files", files=[("file", (target, b"first")), ("file", (target, b"second"))])
    assert r.status_code == 400 and "same path" in r.json()["message"]
    assert Path(target).read_bytes() == b"first"  # what was written before the refusal stays, as with E2B


def test_multipart_several_files_by_filename_relative_to_home(envd: Envd, workdir: Path) -> None:
    with envd.client() as c:
        r = c.post(
            "/files",
            files=[
                ("file", (str(workdir / "b.txt"), b"bb")),
                ("file", (str(workdir / "c" / "c.txt"), b"cc")),
            ],
        )
        rel = c.post("/files", files={"file": ("uploaded-relative.txt", b"rel")})
    assert r.status_code == 200, r.text
    assert [e["path"] for e in r.json()] == [str(workdir / "b.txt"), str(workdir / "c" / "c.txt")]
    assert (workdir / "c" / "c.txt").read_bytes() == b"cc"
    home_file = Path(f"/home/{envd.user}/uploaded-relative.txt")
    assert rel.json()[0]["path"] == str(home_file) and home_file.read_bytes() == b"rel"
    home_file.unlink()


def test_octet_stream_gzip_overwrite_keeps_mode_and_metadata(envd: Envd, workdir: Path) -> None:
    target = workdir / "raw.bin"
    target.write_bytes(b"old")
    target.chmod(0o600)
    with envd.client() as c:
        r = c.post(
            "/files",
            params={"path": str(target)},
            content=gzip.compress(b"x" * 100_000),
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Encoding": "gzip",
                "X-Metadata-Origin": "test",
            },
        )
        assert r.status_code == 200, r.text
        assert target.read_bytes() == b"x" * 100_000
        assert target.stat().st_mode & 0o777 == 0o600
        assert os.getxattr(target, "user.e2b.origin") == b"test"  # E2B's namespace for a file's metadata
        assert r.json() == [
            {"name": "raw.bin", "type": "file", "path": str(target), "metadata": {"origin": "test"}}
        ]
        down = c.get("/files", params={"path": str(target)}, headers={"Accept-Encoding": "gzip"})
        assert down.headers["content-encoding"] == "gzip" and down.content == b"x" * 100_000
        plain = c.get("/files", params={"path": str(target)}, headers={"Accept-Encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.headers["content-length"] == "100000"


def test_download_errors(envd: Envd, workdir: Path) -> None:
    (workdir / "f").write_text("x")
    with envd.client() as c:
        cases = {
            404: {"path": str(workdir / "missing")},
            400: {"path": str(workdir)},
            401: {"path": str(workdir / "f"), "username": "ghost"},
        }
        for status, params in cases.items():
            r = c.get("/files", params=params)
            assert r.status_code == status, (params, r.text)
            assert r.json()["code"] == status and r.json()["message"]
        bad = c.get("/files", params={"path": f"{workdir}/../f"})
        assert bad.status_code == 400 and "'..'" in bad.json()["message"]
        assert c.get("/files").status_code == 400


def test_upload_errors_leave_nothing_behind(envd: Envd, workdir: Path) -> None:
    (workdir / "adir").mkdir()
    with envd.client() as c:
        no_path = c.post("/files", content=b"x", headers={"Content-Type": "application/octet-stream"})
        onto_dir = c.post("/files", params={"path": str(workdir / "adir")}, content=b"x")
        bad_gzip = c.post(
            "/files",
            params={"path": str(workdir / "g")},
            content=b"not gzip",
            headers={"Content-Encoding": "gzip"},
        )
        no_boundary = c.post(
            "/files",
            params={"path": str(workdir / "m")},
            content=b"x",
            headers={"Content-Type": "multipart/form-data"},
        )
        ghost = c.post("/files", params={"path": str(workdir / "u"), "username": "ghost"}, content=b"x")
    assert [no_path.status_code, onto_dir.status_code, bad_gzip.status_code, no_boundary.status_code] == [
        400
    ] * 4
    assert ghost.status_code == 401
    assert not (workdir / "g").exists() and not (workdir / "u").exists()
    assert _leftovers(workdir) == []


def test_upload_over_the_limit_is_413_and_leaves_nothing(fresh_envd: Envd, tmp_path: Path) -> None:
    fresh_envd.stop()
    from tests.conftest import start_envd

    envd = start_envd(tmp_path, "--max-upload-bytes", "1000")
    try:
        target = tmp_path / "big"
        declared = httpx.post(f"{envd.url}/files", params={"path": str(target)}, content=b"x" * 2000)
        chunked = httpx.post(
            f"{envd.url}/files", params={"path": str(target)}, content=iter([b"x" * 600] * 4)
        )
        multi = httpx.post(
            f"{envd.url}/files", params={"path": str(target)}, files={"file": ("big", b"y" * 5000)}
        )
        ok = httpx.post(f"{envd.url}/files", params={"path": str(target)}, content=b"z" * 1000)
        assert [declared.status_code, chunked.status_code, multi.status_code] == [413, 413, 413]
        assert "limit" in chunked.json()["message"]
        assert ok.status_code == 200 and target.read_bytes() == b"z" * 1000
        assert _leftovers(tmp_path) == []
    finally:
        envd.stop()


def test_an_interrupted_upload_removes_the_file_it_created(envd: Envd, workdir: Path) -> None:
    target = workdir / "interrupted.bin"
    with socket.create_connection(("127.0.0.1", envd.port)) as s:
        s.sendall(
            f"POST /files?path={target} HTTP/1.1\r\nHost: x\r\nX-Access-Token: {envd.access_token}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n".encode()
        )
        s.sendall(b"x" * 200_000)
        deadline = time.monotonic() + 5
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert target.exists(), "the upload should be under way, in place"
    deadline = time.monotonic() + 5
    while target.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not target.exists() and _leftovers(workdir) == []


def test_signed_urls(envd: Envd, workdir: Path) -> None:
    path = str(workdir / "signed.txt")
    token = envd.access_token
    assert token
    up = httpx.post(
        f"{envd.url}/files",
        params={"path": path, "signature": _signature(path, "write", "", token)},
        files={"file": ("signed.txt", b"s")},
    )
    assert up.status_code == 200, up.text
    future = int(time.time()) + 60
    good = httpx.get(
        f"{envd.url}/files",
        params={
            "path": path,
            "signature": _signature(path, "read", "", token, future),
            "signature_expiration": future,
        },
    )
    assert good.status_code == 200 and good.content == b"s"
    past = int(time.time()) - 1
    expired = httpx.get(
        f"{envd.url}/files",
        params={
            "path": path,
            "signature": _signature(path, "read", "", token, past),
            "signature_expiration": past,
        },
    )
    wrong_op = httpx.get(
        f"{envd.url}/files", params={"path": path, "signature": _signature(path, "write", "", token)}
    )
    bare = httpx.get(f"{envd.url}/files", params={"path": path})
    assert [expired.status_code, wrong_op.status_code, bare.status_code] == [401, 401, 401]
    assert expired.json() == {"code": 401, "message": "signature is already expired"}  # E2B's very body
    forged_expiry = httpx.get(
        f"{envd.url}/files",
        params={
            "path": path,
            "signature": _signature(path, "read", "", "guess", past),
            "signature_expiration": past,
        },
    )
    assert (
        forged_expiry.json()["message"] == "invalid signature"
    )  # only a genuine signature learns it expired


def _stream(total: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    block = os.urandom(chunk)
    sent = 0
    while sent < total:
        piece = block[: min(chunk, total - sent)]
        sent += len(piece)
        yield piece


def test_one_gigabyte_round_trip_never_sits_in_memory(envd: Envd, workdir: Path) -> None:
    size = 1 << 30
    proc = psutil.Process(envd.proc.pid)
    peak = [proc.memory_info().rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    sent = hashlib.sha256()

    def body() -> Iterator[bytes]:
        for piece in _stream(size):
            sent.update(piece)
            yield piece

    target = workdir / "big.bin"
    try:
        with envd.client(timeout=300) as c:
            r = c.post(
                "/files",
                params={"path": str(target)},
                content=body(),
                headers={"Content-Type": "application/octet-stream"},
            )
            assert r.status_code == 200, r.text
            received = hashlib.sha256()
            with c.stream(
                "GET", "/files", params={"path": str(target)}, headers={"Accept-Encoding": "identity"}
            ) as down:
                assert down.status_code == 200
                for piece in down.iter_raw(1 << 20):
                    received.update(piece)
    finally:
        stop.set()
        sampler.join()
        target.unlink(missing_ok=True)
    assert received.hexdigest() == sent.hexdigest()
    assert peak[0] < 200 * (1 << 20), f"envd peaked at {peak[0] >> 20} MiB for a 1 GiB transfer"


def test_gzip_only_when_asked_for_alone_or_identity_is_refused() -> None:
    from wrenn.envd._files import wants_gzip

    assert wants_gzip("gzip")  # what E2B's SDK sends with gzip=True
    assert wants_gzip("gzip;q=1, identity;q=0")
    assert wants_gzip("gzip, *;q=0")
    assert not wants_gzip("gzip, deflate")  # a generic client's default: no preference
    assert not wants_gzip("gzip, deflate, br, zstd")
    assert not wants_gzip("identity")
    assert not wants_gzip("gzip;q=0")
    assert not wants_gzip("")
