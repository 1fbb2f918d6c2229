"""Every context of the server: created on request or as the default of a language on its first use,
listed, restarted, removed; and the guest's identity, whose change makes every kernel reseed."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import httpx

from ._config import InterpreterConfig
from ._context import Context
from ._jupyter import Jupyter
from ._languages import ENV_NAME, Language, UnknownLanguage

log = logging.getLogger("wrenn.interpreter")


def read_identity(path: Path) -> str:
    """The guest's identity as envd's /init last wrote it ("" before any /init, or outside a guest)."""
    try:
        return path.read_text()
    except OSError:
        return ""


class Contexts:
    def __init__(self, config: InterpreterConfig, jupyter: Jupyter, http: httpx.AsyncClient) -> None:
        self.config = config
        self.jupyter = jupyter
        self.http = http
        self.by_id: dict[str, Context] = {}
        self.defaults: dict[str, str] = {}
        self._default_locks: dict[str, asyncio.Lock] = {}
        #: Kernel names Jupyter has (read at start).
        self.kernels: set[str] = set()

    def identity(self) -> str:
        return read_identity(self.config.identity_file)

    def kernel_of(self, language: Language) -> str:
        return self.config.python_kernel if language.name == "python" else language.kernel

    def check_available(self, language: Language) -> None:
        if self.kernels and self.kernel_of(language) not in self.kernels:
            kernels = ", ".join(sorted(self.kernels))
            raise UnknownLanguage(
                f"language {language.name!r} has no kernel in this sandbox (kernels: {kernels})"
            )

    async def create(self, language: Language, cwd: str | None = None, warm: bool = False) -> Context:
        self.check_available(language)
        kernel_id = await self.jupyter.start_kernel(self.kernel_of(language))
        context = Context(
            self.jupyter,
            kernel_id,
            language,
            cwd or self.config.cwd,
            self.identity(),
            self.config.keepalive_s,
            self.config.interrupt_grace_s,
        )
        try:
            await context.start(self.config.warm_modules if warm else ())
        except BaseException:
            await context.close()
            await self.jupyter.delete_kernel(kernel_id)
            raise
        self.by_id[kernel_id] = context
        log.info(
            "context created", extra={"context": kernel_id, "language": language.name, "cwd": context.cwd}
        )
        return context

    async def default(self, language: Language, warm: bool = False) -> Context:
        """The language's default context, created on its first use (JavaScript and TypeScript share one:
        see Language.default_context)."""
        key = language.default_context
        lock = self._default_locks.setdefault(key, asyncio.Lock())
        async with lock:
            found = self.by_id.get(self.defaults.get(key, ""))
            if found is None:
                found = await self.create(language, warm=warm)
                self.defaults[key] = found.id
            return found

    def get(self, context_id: str) -> Context | None:
        return self.by_id.get(context_id)

    async def remove(self, context: Context) -> None:
        self.by_id.pop(context.id, None)
        for key, context_id in list(self.defaults.items()):
            if context_id == context.id:
                del self.defaults[key]
        await context.close()
        await self.jupyter.delete_kernel(context.id)

    async def reseed_all(self, identity: str) -> None:
        for context in list(self.by_id.values()):
            try:
                await context.refresh_identity(identity)
            except Exception as exc:  # noqa: BLE001 (the next cell in it tries again)
                log.warning("cannot reseed a kernel", extra={"context": context.id, "error": str(exc)})

    async def watch_identity(self) -> None:
        """Reseed every kernel soon after the guest becomes another one (a restore), even one that only
        Jupyter's own API reaches; a cell sent here checks again before it runs."""
        seen = self.identity()
        while True:
            await asyncio.sleep(self.config.identity_poll_s)
            now = self.identity()
            if now != seen:
                seen = now
                await self.reseed_all(now)

    async def sandbox_env(self, access_token: str | None) -> dict[str, str] | None:
        """The sandbox's env vars from envd (as E2B's server does, with the caller's envd token); None when
        envd does not give them (a request without the token once /init set one, envd unreachable)."""
        headers = {"X-Access-Token": access_token} if access_token else {}
        try:
            r = await self.http.get(f"{self.config.envd_url}/envs", headers=headers, timeout=10)
            if r.status_code == 200 and isinstance(body := r.json(), dict):
                return {str(k): str(v) for k, v in body.items() if ENV_NAME.match(str(k))}
            log.info("envd gave no env vars", extra={"status": r.status_code})
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("cannot read the sandbox's env vars", extra={"error": str(exc)})
        return None

    async def close(self) -> None:
        for context in list(self.by_id.values()):
            await context.close()
