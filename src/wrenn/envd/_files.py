"""GET and POST /files: streamed download and upload, multipart or raw, with optional gzip.

Uploads are written in place, as E2B's envd writes them: the target is created (or truncated), given to
the user and filled as the body streams in, so a watcher of its directory sees the target's own events
(CREATE, CHMOD, WRITE) and no temporary file. A file the upload created is removed again when the upload
fails; an overwrite that fails midway leaves the file partly written, as with E2B. No body is ever held
in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import zlib
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import Any, BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from . import _paths
from ._errors import classify
from ._state import EnvdState
from ._users import UnknownUserError, User
from .filesystem import file_metadata, make_dirs

log = logging.getLogger("wrenn.envd.files")

READ_CHUNK = 1 << 20
#: zlib level 1: several times faster than the default 6, for most of its ratio.
GZIP_LEVEL = 1
METADATA_HEADER = "x-metadata-"


class UploadError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error(status: HTTPStatus, message: str) -> JSONResponse:
    """The error body E2B clients read from envd's HTTP routes."""
    return JSONResponse({"code": int(status), "message": message}, status_code=int(status))


def _from_exception(exc: BaseException, path: str | None = None) -> JSONResponse:
    _, status, message = classify(exc, path)
    return error(status, message)


class FileRoutes:
    def __init__(self, state: EnvdState, max_upload_bytes: int | None) -> None:
        self._state = state
        self._max = max_upload_bytes

    # --- shared ----------------------------------------------------------------------------------

    def _authorise(self, request: Request, operation: str) -> JSONResponse | None:
        """A token header or a signed URL; None when the request may proceed."""
        if self._state.token_ok(request.headers.get("x-access-token")):
            return None
        q = request.query_params
        ok, reason = self._state.signature_ok(
            q.get("path", ""), operation, q.get("username"), q.get("signature"), q.get("signature_expiration")
        )
        return None if ok else error(HTTPStatus.UNAUTHORIZED, reason)

    def _user(self, request: Request) -> User:
        return self._state.user(request.query_params.get("username") or None)

    # --- download --------------------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        if (denied := self._authorise(request, "read")) is not None:
            return denied
        raw = request.query_params.get("path", "")
        try:
            user = self._user(request)
            path = _paths.resolve(raw, user.home)
            handle = open(path, "rb")  # noqa: SIM115 - closed by the response body
        except (UnknownUserError, _paths.BadPathError, OSError) as exc:
            if isinstance(exc, IsADirectoryError):
                return error(HTTPStatus.BAD_REQUEST, f"{raw}: is a directory, not a file")
            return _from_exception(exc, raw)
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            handle.close()
            return error(HTTPStatus.BAD_REQUEST, f"{raw}: not a regular file")
        name = os.path.basename(path)
        headers = {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}
        if wants_gzip(request.headers.get("accept-encoding", "")):
            headers["Content-Encoding"] = "gzip"
            body = _read_gzip(handle)
        else:
            headers["Content-Length"] = str(st.st_size)
            body = _read_plain(handle)
        return StreamingResponse(body, media_type="application/octet-stream", headers=headers)

    # --- upload ----------------------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        if (denied := self._authorise(request, "write")) is not None:
            return denied
        try:
            user = self._user(request)
        except UnknownUserError as exc:
            return _from_exception(exc)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and self._max is not None and int(length) > self._max:
            return error(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"upload of {length} bytes exceeds the limit of {self._max}",
            )
        metadata: dict[str, str] = {}
        for name, value in request.headers.items():  # names arrive lower case, as E2B's envd keys them
            if name.startswith(METADATA_HEADER) and name != METADATA_HEADER:
                metadata.setdefault(name[len(METADATA_HEADER) :], value)
        if (problem := file_metadata.problem(metadata)) is not None:
            return error(HTTPStatus.BAD_REQUEST, f"invalid metadata: {problem}")
        content_type, options = parse_options_header(request.headers.get("content-type", ""))
        session = _UploadSession(
            user,
            request.query_params.get("path") or None,
            self._max,
            metadata,
            int(length) if length and length.isdigit() else None,
        )
        stream = _decoded(request.stream(), request.headers.get("content-encoding", ""))
        try:
            if content_type == b"multipart/form-data":
                boundary = options.get(b"boundary")
                if not boundary:
                    raise UploadError(HTTPStatus.BAD_REQUEST, "multipart body without a boundary")
                await session.multipart(stream, boundary)
            else:
                await session.raw(stream)
        except UploadError as exc:
            session.abort()
            return error(exc.status, exc.message)
        except ClientDisconnect:
            session.abort()
            log.info("upload interrupted by the client")
            return error(HTTPStatus.BAD_REQUEST, "client disconnected before the upload completed")
        except (OSError, UnknownUserError, _paths.BadPathError) as exc:
            session.abort()
            return _from_exception(exc, session.current_path)
        except zlib.error as exc:
            session.abort()
            return error(HTTPStatus.BAD_REQUEST, f"invalid gzip body: {exc}")
        return JSONResponse(session.written)


async def _read_plain(handle: BinaryIO) -> AsyncIterator[bytes]:
    with handle:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk


def wants_gzip(accept_encoding: str) -> bool:
    """Gzip when the client asks for it alone (as E2B's SDK does with gzip=True) or refuses identity.

    A generic client's default list ("gzip, deflate, br") states no preference, and compressing costs
    far more than it saves on loopback or a TAP, so those get the file as it is.
    """
    codings: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        name, _, params = item.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name:
            codings[name] = q
    if codings.get("gzip", 0.0) <= 0:
        return False
    identity_refused = codings.get("identity", codings.get("*", 1.0)) <= 0
    return identity_refused or [c for c, q in codings.items() if q > 0] == ["gzip"]


async def _read_gzip(handle: BinaryIO) -> AsyncIterator[bytes]:
    """Read and compress in a worker thread: compression would otherwise stall the event loop."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def next_block() -> tuple[bytes, bool]:
        chunk = handle.read(READ_CHUNK)
        if not chunk:
            return compressor.flush(), True
        return compressor.compress(chunk), False

    with handle:
        while True:
            block, done = await asyncio.to_thread(next_block)
            if block:
                yield block
            if done:
                return


async def _decoded(stream: AsyncIterator[bytes], encoding: str) -> AsyncIterator[bytes]:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        async for chunk in stream:
            yield chunk
        return
    if encoding != "gzip":
        raise UploadError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"unsupported Content-Encoding {encoding!r}")
    decompressor = zlib.decompressobj(31)
    async for chunk in stream:
        if out := decompressor.decompress(chunk):
            yield out
    if tail := decompressor.flush():
        yield tail
    if not decompressor.eof:
        raise UploadError(HTTPStatus.BAD_REQUEST, "gzip body ended early")


class _TargetFile:
    """One file being written in place: created (or opened and truncated), given to the user, filled."""

    def __init__(self, path: str, user: User, limit: int | None, expected: int | None) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        if os.path.isdir(path):
            raise UploadError(HTTPStatus.BAD_REQUEST, f"{path}: is a directory")
        parent = os.path.dirname(path)
        make_dirs(parent, user)
        if expected is not None and expected > shutil.disk_usage(parent).free:
            raise UploadError(
                HTTPStatus.INSUFFICIENT_STORAGE, f"{path}: not enough free space for {expected} bytes"
            )
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            fd, self.created = os.open(path, flags | os.O_EXCL, 0o644), True
        except FileExistsError:
            fd, self.created = os.open(path, flags, 0o644), False
        self.file = os.fdopen(fd, "wb")
        try:  # the events E2B's envd causes, in its order: CREATE, CHMOD, then WRITEs
            os.fchown(fd, user.uid, user.gid)
            if not self.created:  # truncated only once it is the user's
                os.ftruncate(fd, 0)
        except OSError:
            self.abort()
            raise

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            raise UploadError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"{self.path}: upload exceeds the limit of {self.limit} bytes",
            )
        self.file.write(data)

    def commit(self, metadata: dict[str, str]) -> dict[str, Any]:
        self.file.flush()
        if not file_metadata.replace(self.file.fileno(), metadata) and metadata:
            log.warning("metadata not stored: no extended attributes here", extra={"path": self.path})
        self.file.close()
        entry: dict[str, Any] = {"name": os.path.basename(self.path), "type": "file", "path": self.path}
        if stored := file_metadata.read(self.path):
            entry["metadata"] = stored
        return entry

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        if self.created:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


class _UploadSession:
    def __init__(
        self, user: User, path: str | None, limit: int | None, metadata: dict[str, str], length: int | None
    ) -> None:
        self.user = user
        self.path = path
        self.limit = limit
        self.metadata = metadata
        self.length = length
        self.written: list[dict[str, Any]] = []
        self.current: _TargetFile | None = None

    @property
    def current_path(self) -> str | None:
        return self.current.path if self.current else self.path

    def _open(self, name: str | None) -> None:
        raw = self.path if (self.path and not self.written) else name
        if not raw:
            raise UploadError(HTTPStatus.BAD_REQUEST, "no destination: pass ?path= or a filename in the part")
        path = _paths.resolve(raw, self.user.home)
        if any(entry["path"] == path for entry in self.written):  # refused as E2B's envd refuses it
            raise UploadError(
                HTTPStatus.BAD_REQUEST,
                f"you cannot upload multiple files to the same path '{path}' in one upload request",
            )
        self.current = _TargetFile(path, self.user, self.limit, self.length)

    def _close(self) -> None:
        assert self.current is not None
        self.written.append(self.current.commit(self.metadata))
        self.current = None

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None

    async def raw(self, stream: AsyncIterator[bytes]) -> None:
        if not self.path:
            raise UploadError(HTTPStatus.BAD_REQUEST, "path is required for a raw (octet-stream) upload")
        self._open(None)
        assert self.current is not None
        async for chunk in stream:
            self.current.write(chunk)
        self._close()

    async def multipart(self, stream: AsyncIterator[bytes], boundary: bytes) -> None:
        parts = _PartReader(self)
        parser = MultipartParser(boundary, parts.callbacks())  # type: ignore[arg-type]
        async for chunk in stream:
            parser.write(chunk)
            if parts.failure is not None:
                raise parts.failure
        parser.finalize()
        if parts.failure is not None:
            raise parts.failure
        if not self.written:
            raise UploadError(HTTPStatus.BAD_REQUEST, "the multipart body has no file part")


class _PartReader:
    """Callbacks for python-multipart's push parser that stream each file part to disk."""

    def __init__(self, session: _UploadSession) -> None:
        self.session = session
        self.failure: BaseException | None = None
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}
        self._skip = False

    def callbacks(self) -> dict[str, Callable[..., None]]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _guard(self, func: Callable[[], None]) -> None:
        if self.failure is not None:
            return
        try:
            func()
        except (UploadError, OSError, _paths.BadPathError) as exc:
            self.failure = exc

    def _begin(self) -> None:
        self._headers = {}
        self._skip = False

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._field.lower()] = self._value
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        if filename is None:  # a plain form field, not a file
            self._skip = True
            return
        self._guard(lambda: self.session._open(filename.decode()))

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._skip or self.session.current is None:
            return
        current = self.session.current
        self._guard(lambda: current.write(data[start:end]))

    def _end(self) -> None:
        if self._skip or self.session.current is None:
            return
        self._guard(self.session._close)
