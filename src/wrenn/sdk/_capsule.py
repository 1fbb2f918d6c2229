"""`Capsule` and `AsyncCapsule`: one microVM sandbox, its lifecycle and its sub-APIs."""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any, ClassVar

import httpx

from . import _api
from ._commands import AsyncCommands, Commands
from ._config import Config, proxy_url
from ._files import AsyncFiles, Files
from ._git import AsyncGit, Git
from ._models import CapsuleInfo, Status, Template
from ._pty import AsyncPtySession, PtySession
from ._transport import aopen_channel, open_channel, run_async, run_sync

__all__ = ["AsyncCapsule", "Capsule"]

log = logging.getLogger("wrenn.sdk")


class _DualMethod:
    """`Capsule.destroy(id)` on the class, `capsule.destroy()` on an instance."""

    def __init__(self, instance_name: str, class_name: str) -> None:
        self._instance_name = instance_name
        self._class_name = class_name

    def __get__(self, obj: object, owner: type) -> Any:
        if obj is None:
            return getattr(owner, self._class_name)
        return getattr(obj, self._instance_name)


@contextlib.contextmanager
def _client(api_key: str | None, base_url: str | None) -> Iterator[httpx.Client]:
    with httpx.Client(**Config.resolve(api_key, base_url).client_kwargs()) as client:
        yield client


@contextlib.asynccontextmanager
async def _aclient(api_key: str | None, base_url: str | None) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(**Config.resolve(api_key, base_url).client_kwargs()) as client:
        yield client


class Capsule:
    """A Wrenn capsule: a microVM sandbox on your own control plane.

    `Capsule(...)` creates one (as does `Capsule.create(...)`); `Capsule.connect(id)` attaches to an
    existing one. As a context manager it is destroyed on exit::

        with Capsule() as capsule:
            print(capsule.commands.run("echo hello").stdout)

    Credentials come from `api_key=` or `WRENN_API_KEY` (sent as `X-API-Key`); the control plane
    from `base_url=`, `WRENN_BASE_URL`, or `http://localhost:8080` (self-hosted; the hosted seed SDK
    defaulted to `https://app.wrenn.dev/api`). Requests go to `{base_url}/v1/...`.

    Attributes:
        commands: `Commands`, files: `Files`, git: `Git`.
    """

    #: The template a create without one uses (a subclass, e.g. the code interpreter's, has its own).
    default_template: ClassVar[str] = "minimal"

    def __init__(
        self,
        template: str | None = None,
        vcpus: int = 1,
        memory_mb: int | None = None,
        timeout: int | None = None,
        *,
        wait: bool = False,
        allow_public_traffic: bool | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        _info: CapsuleInfo | None = None,
        _config: Config | None = None,
    ) -> None:
        """Create and boot a capsule from `template` with `vcpus` and `memory_mb` (None: the template's own,
        512 MiB for most base images). `timeout` is the
        inactivity TTL in seconds after which the server pauses it (None: the server's default, 0:
        never). With `wait=True`, return only once it is `running`. `allow_public_traffic=False`: its
        ports (`get_url`) answer only requests carrying `info.traffic_access_token`."""
        self._config = _config or Config.resolve(api_key, base_url)
        self._http = httpx.Client(**self._config.client_kwargs())
        if _info is None:
            try:
                template = template or self.default_template
                call = _api.create_capsule(template, vcpus, memory_mb, timeout, allow_public_traffic)
                _info = run_sync(self._http, call)
            except BaseException:
                self._http.close()
                raise
        self._info: CapsuleInfo = _info
        self._id = _info.id
        self.commands = Commands(self._id, self._http)
        self.files = Files(self._id, self._http)
        self.git = Git(self._id, self._http)
        if wait:
            self.wait_ready()

    @property
    def capsule_id(self) -> str:
        return self._id

    @property
    def info(self) -> CapsuleInfo:
        """The capsule as last fetched (creation, `get_info`, `pause`, `resume`, `wait_ready`)."""
        return self._info

    @classmethod
    def create(
        cls,
        template: str | None = None,
        vcpus: int = 1,
        memory_mb: int | None = None,
        timeout: int | None = None,
        *,
        wait: bool = False,
        allow_public_traffic: bool | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> Capsule:
        """Same as `Capsule(...)`."""
        return cls(
            template, vcpus, memory_mb, timeout, wait=wait, allow_public_traffic=allow_public_traffic,
            api_key=api_key, base_url=base_url,
        )  # fmt: skip

    @classmethod
    def connect(cls, capsule_id: str, *, api_key: str | None = None, base_url: str | None = None) -> Capsule:
        """Attach to an existing capsule, resuming it if it is paused."""
        config = Config.resolve(api_key, base_url)
        with httpx.Client(**config.client_kwargs()) as client:
            info = run_sync(client, _api.connect_op(capsule_id))
        return cls(_info=info, _config=config)

    @classmethod
    def list(cls, *, api_key: str | None = None, base_url: str | None = None) -> builtins.list[CapsuleInfo]:
        """The team's capsules (not the stopped or failed ones)."""
        with _client(api_key, base_url) as client:
            return run_sync(client, _api.list_capsules())

    # -- lifecycle: on an instance, or on the class with an ID -----------------------------------

    destroy = _DualMethod("_destroy", "_destroy_by_id")
    pause = _DualMethod("_pause", "_pause_by_id")
    resume = _DualMethod("_resume", "_resume_by_id")
    get_info = _DualMethod("_get_info", "_get_info_by_id")

    def _destroy(self) -> None:
        """Destroy the capsule (its VM and disk are gone)."""
        run_sync(self._http, _api.destroy_capsule(self._id))

    def _pause(self) -> CapsuleInfo:
        """Snapshot the capsule and free its resources; `resume` brings it back as it was."""
        self._info = run_sync(self._http, _api.pause_capsule(self._id))
        return self._info

    def _resume(self) -> CapsuleInfo:
        self._info = run_sync(self._http, _api.resume_capsule(self._id))
        return self._info

    def _get_info(self) -> CapsuleInfo:
        self._info = run_sync(self._http, _api.get_capsule(self._id))
        return self._info

    @staticmethod
    def _destroy_by_id(capsule_id: str, *, api_key: str | None = None, base_url: str | None = None) -> None:
        with _client(api_key, base_url) as client:
            run_sync(client, _api.destroy_capsule(capsule_id))

    @staticmethod
    def _pause_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        with _client(api_key, base_url) as client:
            return run_sync(client, _api.pause_capsule(capsule_id))

    @staticmethod
    def _resume_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        with _client(api_key, base_url) as client:
            return run_sync(client, _api.resume_capsule(capsule_id))

    @staticmethod
    def _get_info_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        with _client(api_key, base_url) as client:
            return run_sync(client, _api.get_capsule(capsule_id))

    # -- instance only ---------------------------------------------------------------------------

    def ping(self) -> None:
        """Reset the inactivity timer."""
        run_sync(self._http, _api.ping_capsule(self._id))

    def wait_ready(self, timeout: float = 30, interval: float = 0.5) -> None:
        """Wait until the capsule is `running` (resuming it if paused). `TimeoutError` after
        `timeout` seconds; `RuntimeError` if it stops or fails."""
        self._info = run_sync(self._http, _api.wait_ready_op(self._id, timeout, interval, time.monotonic))

    def is_running(self) -> bool:
        """Whether the capsule is `running` now (fetches it)."""
        return self._get_info().status == Status.running

    def create_snapshot(
        self, name: str | None = None, overwrite: bool = False, default_user: str | None = None
    ) -> Template:
        """Save the capsule as a template (`name`, or a generated one) to boot new capsules from. The
        capsule is left paused. `overwrite=True` replaces a snapshot of the same name. `default_user`:
        who commands run as in its capsules (e.g. "root", the seed's default; default: as in this one)."""
        return run_sync(self._http, _api.create_snapshot(self._id, name, overwrite, default_user))

    def logs(
        self, cursor: int | None = None, limit: int = 1000, backward: bool = False
    ) -> builtins.list[dict[str, Any]]:
        """The capsule's console as log entries (`{timestamp, timestamp_ms, level, source, message}`):
        `limit` from `cursor` (unix ms) on, oldest first, or with `backward` the newest up to it."""
        return run_sync(self._http, _api.capsule_logs(self._id, cursor, limit, backward))

    def fork(self, count: int = 1) -> builtins.list[Capsule]:
        """`count` new capsules (1-20) in this one's state: memory, running processes and files as they
        are now. This capsule runs on (it is paused for the copy). The forks start from a template named
        `fork-<id>-...`, which `Capsule.delete_snapshot` removes once they are gone."""
        infos = run_sync(self._http, _api.fork_capsule(self._id, count))
        return [Capsule(_info=info, _config=self._config) for info in infos]

    @staticmethod
    def list_snapshots(*, api_key: str | None = None, base_url: str | None = None) -> builtins.list[Template]:
        """The base images and the team's templates."""
        with _client(api_key, base_url) as client:
            return run_sync(client, _api.list_snapshots())

    @staticmethod
    def delete_snapshot(name: str, *, api_key: str | None = None, base_url: str | None = None) -> None:
        """Delete a template of the team (refused while capsules started from it exist)."""
        with _client(api_key, base_url) as client:
            run_sync(client, _api.delete_snapshot(name))

    def get_url(self, port: int) -> str:
        """The URL of `port` inside the capsule through the control plane's proxy
        (`ws[s]://{port}-{capsule_id}.{host}`)."""
        return proxy_url(self._config.base_url, self._id, port)

    @contextlib.contextmanager
    def pty(
        self,
        cmd: str = "/bin/bash",
        args: builtins.list[str] | None = None,
        cols: int = 80,
        rows: int = 24,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> Iterator[PtySession]:
        """Start a terminal running `cmd`::

        with capsule.pty() as term:
            term.write(b"echo hi\\n")
            for event in term:
                if event.type == "output":
                    print(event.data.decode(), end="")
        """
        start = _api.pty_start_message(cmd, args, cols, rows, envs, cwd)
        with open_channel(self._http, _api.capsule_path(self._id, "/pty")) as channel:
            channel.send(start)
            yield PtySession(channel, self._id)

    @contextlib.contextmanager
    def pty_connect(self, tag: str) -> Iterator[PtySession]:
        """Reattach to a terminal by its tag (`PtySession.tag`)."""
        with open_channel(self._http, _api.capsule_path(self._id, "/pty")) as channel:
            channel.send({"type": "connect", "tag": tag, "encoding": "base64"})
            yield PtySession(channel, self._id)

    def close(self) -> None:
        """Close the HTTP connections (the capsule keeps running)."""
        self._http.close()

    def __enter__(self) -> Capsule:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self._destroy()
        except Exception as error:  # noqa: BLE001 - the with block's own exception matters more
            log.warning("failed to destroy capsule %s: %s", self._id, error)
        finally:
            self.close()

    def __repr__(self) -> str:
        return f"Capsule(capsule_id={self._id!r}, status={self._info.status!r})"


class AsyncCapsule:
    """`Capsule` on asyncio: create it with `await AsyncCapsule.create(...)` (or `connect`), then
    await the same methods::

        async with await AsyncCapsule.create() as capsule:
            result = await capsule.commands.run("echo hello")
    """

    default_template: ClassVar[str] = "minimal"

    def __init__(self, *, _info: CapsuleInfo, _config: Config) -> None:
        self._config = _config
        self._http = httpx.AsyncClient(**_config.client_kwargs())
        self._info = _info
        self._id = _info.id
        self.commands = AsyncCommands(self._id, self._http)
        self.files = AsyncFiles(self._id, self._http)
        self.git = AsyncGit(self._id, self._http)

    @property
    def capsule_id(self) -> str:
        return self._id

    @property
    def info(self) -> CapsuleInfo:
        return self._info

    @classmethod
    async def create(
        cls,
        template: str | None = None,
        vcpus: int = 1,
        memory_mb: int | None = None,
        timeout: int | None = None,
        *,
        wait: bool = False,
        allow_public_traffic: bool | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
    ) -> AsyncCapsule:
        """See `Capsule.__init__`."""
        config = Config.resolve(api_key, base_url)
        template = template or cls.default_template
        call = _api.create_capsule(template, vcpus, memory_mb, timeout, allow_public_traffic)
        async with httpx.AsyncClient(**config.client_kwargs()) as client:
            info = await run_async(client, call)
        capsule = cls(_info=info, _config=config)
        if wait:
            await capsule.wait_ready()
        return capsule

    @classmethod
    async def connect(
        cls, capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> AsyncCapsule:
        """See `Capsule.connect`."""
        config = Config.resolve(api_key, base_url)
        async with httpx.AsyncClient(**config.client_kwargs()) as client:
            info = await run_async(client, _api.connect_op(capsule_id))
        return cls(_info=info, _config=config)

    @classmethod
    async def list(
        cls, *, api_key: str | None = None, base_url: str | None = None
    ) -> builtins.list[CapsuleInfo]:
        async with _aclient(api_key, base_url) as client:
            return await run_async(client, _api.list_capsules())

    destroy = _DualMethod("_destroy", "_destroy_by_id")
    pause = _DualMethod("_pause", "_pause_by_id")
    resume = _DualMethod("_resume", "_resume_by_id")
    get_info = _DualMethod("_get_info", "_get_info_by_id")

    async def _destroy(self) -> None:
        await run_async(self._http, _api.destroy_capsule(self._id))

    async def _pause(self) -> CapsuleInfo:
        self._info = await run_async(self._http, _api.pause_capsule(self._id))
        return self._info

    async def _resume(self) -> CapsuleInfo:
        self._info = await run_async(self._http, _api.resume_capsule(self._id))
        return self._info

    async def _get_info(self) -> CapsuleInfo:
        self._info = await run_async(self._http, _api.get_capsule(self._id))
        return self._info

    @staticmethod
    async def _destroy_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> None:
        async with _aclient(api_key, base_url) as client:
            await run_async(client, _api.destroy_capsule(capsule_id))

    @staticmethod
    async def _pause_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        async with _aclient(api_key, base_url) as client:
            return await run_async(client, _api.pause_capsule(capsule_id))

    @staticmethod
    async def _resume_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        async with _aclient(api_key, base_url) as client:
            return await run_async(client, _api.resume_capsule(capsule_id))

    @staticmethod
    async def _get_info_by_id(
        capsule_id: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> CapsuleInfo:
        async with _aclient(api_key, base_url) as client:
            return await run_async(client, _api.get_capsule(capsule_id))

    async def ping(self) -> None:
        await run_async(self._http, _api.ping_capsule(self._id))

    async def wait_ready(self, timeout: float = 30, interval: float = 0.5) -> None:
        self._info = await run_async(
            self._http, _api.wait_ready_op(self._id, timeout, interval, time.monotonic)
        )

    async def is_running(self) -> bool:
        return (await self._get_info()).status == Status.running

    async def create_snapshot(
        self, name: str | None = None, overwrite: bool = False, default_user: str | None = None
    ) -> Template:
        """See `Capsule.create_snapshot`."""
        return await run_async(self._http, _api.create_snapshot(self._id, name, overwrite, default_user))

    async def logs(
        self, cursor: int | None = None, limit: int = 1000, backward: bool = False
    ) -> builtins.list[dict[str, Any]]:
        """As `Capsule.logs`."""
        return await run_async(self._http, _api.capsule_logs(self._id, cursor, limit, backward))

    async def fork(self, count: int = 1) -> builtins.list[AsyncCapsule]:
        """See `Capsule.fork`."""
        infos = await run_async(self._http, _api.fork_capsule(self._id, count))
        return [AsyncCapsule(_info=info, _config=self._config) for info in infos]

    def get_url(self, port: int) -> str:
        return proxy_url(self._config.base_url, self._id, port)

    @contextlib.asynccontextmanager
    async def pty(
        self,
        cmd: str = "/bin/bash",
        args: builtins.list[str] | None = None,
        cols: int = 80,
        rows: int = 24,
        envs: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> AsyncIterator[AsyncPtySession]:
        start = _api.pty_start_message(cmd, args, cols, rows, envs, cwd)
        async with aopen_channel(self._http, _api.capsule_path(self._id, "/pty")) as channel:
            await channel.send(start)
            yield AsyncPtySession(channel, self._id)

    @contextlib.asynccontextmanager
    async def pty_connect(self, tag: str) -> AsyncIterator[AsyncPtySession]:
        async with aopen_channel(self._http, _api.capsule_path(self._id, "/pty")) as channel:
            await channel.send({"type": "connect", "tag": tag, "encoding": "base64"})
            yield AsyncPtySession(channel, self._id)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncCapsule:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._destroy()
        except Exception as error:  # noqa: BLE001
            log.warning("failed to destroy capsule %s: %s", self._id, error)
        finally:
            await self.close()

    def __repr__(self) -> str:
        return f"AsyncCapsule(capsule_id={self._id!r}, status={self._info.status!r})"
