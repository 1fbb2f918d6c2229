"""A team's own (BYOC) host reports base images too, and its agent is the team's: what it says must not
decide what every other team's capsules get. Here it says `minimal` takes 4096 MiB and sorts before the
platform's host; another team's create of `minimal` that asks for no memory still gets the platform host's
512: the platform's facts of a base image win over a team's host's."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.ext.asyncio import AsyncSession

from tests.controlplane._db import run
from wrenn.controlplane.db import Host
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._fake_agent import FakeAgent
from .conftest import account


def test_a_teams_host_does_not_decide_a_base_images_memory_for_others(
    cp_settings: Any, fake_agent: FakeAgent
) -> None:
    from wrenn.controlplane import create_app

    fake_agent.recorder.images = [pb.ImageInfo(name="minimal", version="1")]
    with TestClient(create_app(cp_settings)) as api:
        mallory, ada = account(api, "mallory@example.com"), account(api, "ada@example.com")
        lie = {"name": "minimal", "version": "1", "memory_mb": 4096}
        byoc = Host(
            id="host-0000byoc", team_id=mallory.team_id, address="http://127.0.0.1:1", status="online",
            images=[lie],
        )  # fmt: skip

        async def add(session: AsyncSession) -> None:
            session.add(byoc)

        run(api, add)
        r = api.post("/v1/capsules", json={"template": "minimal"}, headers=ada.jwt)
        assert r.status_code == 201, r.text
        assert r.json()["memory_mb"] == 512
        sent = [c.memory_mb for name, c in fake_agent.recorder.calls if name == "create_sandbox"]
        assert sent == [512]
