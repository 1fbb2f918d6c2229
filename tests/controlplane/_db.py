"""Direct database access for control plane tests, through the app's own sessions on its event loop
(`TestClient.portal`): rows a test needs without a VM, and snapshots of what a request changed."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from wrenn.controlplane._ids import new_id
from wrenn.controlplane.db import (
    Base,
    Capsule,
    Host,
    Template,
    TemplateBuild,
    TemplateFile,
    TemplateTag,
    User,
)

_T = TypeVar("_T")

#: Nothing listens on the discard port: an agent call there fails at once (503 host_unavailable).
DEAD_AGENT = "http://127.0.0.1:9"


def run(api: TestClient, work: Callable[[AsyncSession], Awaitable[_T]]) -> _T:
    async def call() -> _T:
        async with api.app.state.sessions() as session:  # type: ignore[attr-defined]
            result = await work(session)
            await session.commit()
            return result

    return api.portal.call(call)  # type: ignore[union-attr]


def insert_host(api: TestClient, team_id: str | None = None, status: str = "online") -> str:
    host_id = new_id("host")

    async def add(session: AsyncSession) -> None:
        session.add(
            Host(
                id=host_id, team_id=team_id, address=DEAD_AGENT, status=status, memory_mb=1 << 20, cpu_cores=8
            )
        )

    run(api, add)
    return host_id


def insert_users(api: TestClient, emails: list[str]) -> None:
    """Accounts without the cost of hashing a password (they cannot log in); `gone@...` is disabled."""

    async def add(session: AsyncSession) -> None:
        for email in emails:
            status = "disabled" if email.startswith("gone@") else "active"
            session.add(User(id=new_id("usr"), email=email, name=email, password_hash="-", status=status))

    run(api, add)


def insert_capsule(api: TestClient, team_id: str, status: str = "running", host: str | None = None) -> str:
    """A capsule row; `host="unreachable"` puts it on a new online host whose agent does not answer,
    any other string is an existing host id."""
    host_id = insert_host(api) if host == "unreachable" else host
    capsule_id = new_id("cl")

    async def add(session: AsyncSession) -> None:
        session.add(
            Capsule(
                id=capsule_id,
                team_id=team_id,
                host_id=host_id,
                template="minimal",
                status=status,
                vcpus=1,
                memory_mb=512,
                host_ip="10.11.0.2" if host_id else "",
            )
        )

    run(api, add)
    return capsule_id


def insert_template(api: TestClient, team_id: str, name: str, host: str | None = None) -> str:
    """A template row of the team (its files would be on `host`)."""
    template_id = new_id("tpl")

    async def add(session: AsyncSession) -> None:
        session.add(
            Template(
                id=template_id,
                team_id=team_id,
                name=name,
                host_id=host,
                vcpus=1,
                memory_mb=512,
                disk_size_mb=5120,
                source_capsule_id="",
            )
        )

    run(api, add)
    return name


def insert_channel(api: TestClient, team_id: str) -> str:
    """A webhook channel of the team (to a URL nothing answers: the tests never deliver to it)."""
    from wrenn.controlplane.db import Channel

    channel_id = new_id("ch")

    async def add(session: AsyncSession) -> None:
        config = json.dumps({"url": "https://hooks.example.com/wrenn", "secret": "s" * 32})
        session.add(Channel(id=channel_id, team_id=team_id, name=f"hook-{channel_id}", provider="webhook",
                            config=config, events=["capsule.created"]))  # fmt: skip

    run(api, add)
    return channel_id


def insert_e2b_webhook(api: TestClient, team_id: str) -> str:
    """An E2B lifecycle webhook of the team (a channel of provider `e2b`, as `POST /events/webhooks` makes
    one), to a URL nothing answers: the tests never deliver to it."""
    from wrenn.controlplane.db import Channel

    webhook_id = new_id("wh")

    async def add(session: AsyncSession) -> None:
        config = {"url": "https://hooks.example.com/e2b", "secret": "s" * 32, "enabled": "true", "name": ""}
        session.add(Channel(id=webhook_id, team_id=team_id, name=f"e2b:{webhook_id}", provider="e2b",
                            config=json.dumps(config), events=["sandbox.lifecycle.created"]))  # fmt: skip

    run(api, add)
    return webhook_id


def insert_built_template(api: TestClient, team_id: str, name: str) -> dict[str, str]:
    """A built template of the team with a ready build (its files would be in the template store), a tag
    and an uploaded archive: {template_id, name, build_id, files_hash}."""
    import hashlib
    import uuid

    template_id, build_id = new_id("tpl"), str(uuid.uuid4())
    files_hash = hashlib.sha256(name.encode()).hexdigest()

    async def add(session: AsyncSession) -> None:
        session.add(
            Template(
                id=template_id, team_id=team_id, name=name, type="build", vcpus=1, memory_mb=512,
                disk_size_mb=5120, build_id=build_id,
            )
        )  # fmt: skip
        await session.flush()
        session.add(
            TemplateBuild(
                id=build_id, template_id=template_id, team_id=team_id, status="ready",
                spec={"steps": [], "base": {"image": "minimal"}}, result={"buildId": build_id},
            )
        )  # fmt: skip
        await session.flush()
        session.add(TemplateTag(template_id=template_id, tag="default", build_id=build_id))
        session.add(
            TemplateFile(team_id=team_id, files_hash=files_hash, sha256=files_hash, size=3, data=b"abc")
        )

    run(api, add)
    return {"template_id": template_id, "name": name, "build_id": build_id, "files_hash": files_hash}


def capsule_status(api: TestClient, capsule_id: str) -> str:
    async def get(session: AsyncSession) -> str:
        capsule = await session.get(Capsule, capsule_id)
        assert capsule is not None
        return capsule.status

    return run(api, get)


def _update(api: TestClient, capsule_id: str, **values: Any) -> None:
    async def set_(session: AsyncSession) -> None:
        capsule = await session.get(Capsule, capsule_id)
        assert capsule is not None
        for name, value in values.items():
            setattr(capsule, name, value)

    run(api, set_)


def set_capsule_status(api: TestClient, capsule_id: str, status: str) -> None:
    _update(api, capsule_id, status=status)


def set_host(api: TestClient, capsule_id: str, host_id: str | None) -> None:
    _update(api, capsule_id, host_id=host_id)


#: Tables the usage sampler writes on its own schedule (every 10 s while capsules run), whatever requests do.
SAMPLED = frozenset({"team_samples", "capsule_samples"})


def snapshot(api: TestClient) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (but the sampler's, `SAMPLED`), to compare before and after a request."""

    async def dump(session: AsyncSession) -> dict[str, list[tuple[Any, ...]]]:
        tables: dict[str, list[tuple[Any, ...]]] = {}
        for table in Base.metadata.sorted_tables:
            if table.name in SAMPLED:
                continue
            rows = (await session.execute(select(table))).all()
            tables[table.name] = sorted((tuple(r) for r in rows), key=repr)
        return tables

    return run(api, dump)
