"""Templates of a team, made from its capsules: a paused capsule's memory and disk, kept on its host to
start new capsules from. Checkpoints (a template of a capsule that then runs on) and forks (capsules
started from a fresh checkpoint) are built on them. Shared by `/v1/snapshots`, `/v1/capsules/{id}/fork`
and E2B's snapshot, fork and template routes."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from .. import _audit, _errors
from .._ids import new_id
from .._principal import Principal, audit_fields
from ..db import Capsule, Host, Template
from ..db import CapsuleStatus as S
from . import events, quotas
from .capsules import CapsuleService, CreateSpec, base_images

#: A template's name (the seed's pattern).
NAME = r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,63}$"


class TemplateService:
    def __init__(self, capsules: CapsuleService) -> None:
        self.capsules = capsules
        self.session = capsules.session
        self.agents = capsules.agents

    async def base_images(self) -> dict[str, dict[str, Any]]:
        """The platform's base images by name and by alias, as its hosts report them. No team template may
        take a name of these."""
        return await base_images(self.session)

    async def of_team(self, team_id: str) -> list[Template]:
        rows = await self.session.execute(
            select(Template).where(Template.team_id == team_id).order_by(Template.created_at)
        )
        return list(rows.scalars())

    async def _by_id(self, team_id: str, template_id: str) -> Template | None:
        found = await self.session.get(Template, template_id)
        return found if found is not None and found.team_id == team_id else None

    async def check_name(self, name: str) -> None:
        if name in await self.base_images():
            raise _errors.conflict(f"{name!r} is the name of a base image", "name_reserved")

    async def claim_name(self, team_id: str, name: str, overwrite: bool = False) -> None:
        """Make `name` free for a new template of the team: a base image's name is refused; the team's
        template of that name is replaced with `overwrite`, else refused."""
        await self.check_name(name)
        existing = await self.capsules.template(team_id, name)
        if existing is None:
            return
        if not overwrite:
            raise _errors.conflict(f"the team has a template named {name!r}", "template_name_taken")
        await self._drop_on_host(existing)
        await self.session.delete(existing)
        await self.session.commit()

    async def _drop_on_host(self, template: Template) -> None:
        """Delete a template's files on its host (already gone counts as deleted)."""
        host = await self.session.get(Host, template.host_id) if template.host_id else None
        if host is None:
            return
        try:
            await self.agents.call(
                host.id,
                self.agents.client(host.address, host_id=host.id).delete_template(
                    pb.DeleteTemplateRequest(name=template.id)
                ),
            )
        except _errors.ApiError as exc:
            if exc.code == "invalid_state":  # capsules stand on its disk
                raise _errors.conflict(exc.message, "template_in_use") from None
            if exc.code != "not_found":
                raise

    async def delete(self, caller: Principal, name: str) -> None:
        """Delete the team's template; 409 `template_in_use` while capsules started from it exist."""
        template = await self.capsules.template(caller.team_id, name)
        if template is None:
            template = await self._by_id(caller.team_id, name)
        if template is None:
            raise _errors.not_found(f"template {name}")
        if template.type == "build":
            from .builds import BuildService

            await BuildService(self.capsules).delete(caller, template)
            return
        await self._drop_on_host(template)
        await self.session.delete(template)
        _audit.record(
            self.session, **audit_fields(caller), resource_type="snapshot", resource_id=name, action="delete"
        )
        events.record(
            self.session, events.TEMPLATE_DELETED, team_id=caller.team_id, resource_type="template",
            resource_id=template.id, actor=caller, name=name,
        )  # fmt: skip
        await self.session.commit()

    async def make(
        self, caller: Principal, capsule: Capsule, name: str, default_user: str | None = None
    ) -> Template:
        """Pause `capsule` if it runs, and make template `name` of its snapshot on its host (committed). Its
        capsules run commands as `default_user` (None: as the capsule's do)."""
        if capsule.status == S.RUNNING:
            await self.capsules.pause(capsule, caller)
        elif capsule.status != S.PAUSED:
            raise _errors.invalid_state(f"capsule {capsule.id} is {capsule.status}: it must run or be paused")
        host = await self.capsules.host_of(capsule)
        # A template holds at least the capsule's memory on its host's disk; its real size counts once made.
        await quotas.admit(
            self.session, self.capsules.settings, caller.team_id, quotas.Resources(disk_mb=capsule.memory_mb)
        )
        await self.session.commit()
        template_id = new_id("tpl")
        made = await self.agents.call(
            host.id,
            self.agents.client(host.address, host_id=host.id).create_template(
                pb.CreateTemplateRequest(sandbox_id=capsule.id, name=template_id), timeout_ms=300_000
            ),
        )
        info = made.template or pb.TemplateInfo()
        template = Template(
            id=template_id,
            team_id=caller.team_id,
            name=name,
            host_id=host.id,
            vcpus=info.vcpus or capsule.vcpus,
            memory_mb=info.memory_mb or capsule.memory_mb,
            disk_size_mb=info.disk_size_mb or capsule.disk_size_mb,
            size_bytes=info.size_bytes,
            source_capsule_id=capsule.id,
            default_user=(capsule.metadata_ or {}).get("default_user", "")
            if default_user is None
            else default_user,
            network=dict(capsule.network or {}),  # its capsules' default egress policy
            network_secrets=capsule.network_secrets,
        )
        self.session.add(template)
        _audit.record(
            self.session, **audit_fields(caller), resource_type="snapshot", resource_id=name, action="create"
        )
        events.record(
            self.session, events.TEMPLATE_CREATED, team_id=caller.team_id, resource_type="template",
            resource_id=template.id, actor=caller, name=name, capsule_id=capsule.id,
        )  # fmt: skip
        await self.session.commit()
        return template

    async def checkpoint(self, caller: Principal, capsule: Capsule, name: str) -> Template:
        """A template of the capsule as it is now, which it then goes on from: a running one is paused for
        the copy and resumed (E2B's snapshots and forks; `/v1/snapshots` leaves it paused, as the seed)."""
        was_running = capsule.status == S.RUNNING
        template = await self.make(caller, capsule, name)
        if was_running:
            await self.capsules.resume(capsule, caller)
        return template

    async def fork(self, caller: Principal, capsule: Capsule, count: int) -> list[Capsule]:
        """`count` new capsules in the capsule's state now; they stand on a template `fork-<id>-<hex>`."""
        name = f"fork-{capsule.id}-{secrets.token_hex(3)}"
        template = await self.checkpoint(caller, capsule, name)
        spec = CreateSpec(template=template.name, timeout_sec=capsule.timeout_sec)
        return await self.capsules.create(caller, spec, count=count)
