"""A base image's own memory, in-process over the recording stand-in agent: a create that asks for no memory
gets what its image's host reports for it (the code interpreter's 1024 MiB: its warm Python kernel and a Deno
kernel do not fit in 512), by name or alias; one that asks gets what it asked; an image whose host does not
say (an older agent: 0) gets the platform's 512."""

from __future__ import annotations

from pathlib import Path

from tests.security._fake_agent import FakeAgent
from wrenn.proto.hostagent.v1 import hostagent_pb as pb

from ._receiver import control_plane, events_settings, owner


def test_a_create_without_memory_gets_the_base_images_own(
    database_url: str, tmp_path: Path, fake_agent: FakeAgent
) -> None:
    fake_agent.recorder.images = [
        pb.ImageInfo(name="minimal", version="1"),
        pb.ImageInfo(name="code-interpreter", version="1", memory_mb=1024, aliases=["code-interpreter-v1"]),
    ]
    with control_plane(events_settings(database_url, tmp_path / "cp", fake_agent)) as api:
        jwt = owner(api)
        made = []
        for body in (
            {"template": "code-interpreter"},
            {"template": "code-interpreter-v1"},
            {"template": "code-interpreter", "memory_mb": 768},
            {"template": "minimal"},
        ):
            r = api.post("/v1/capsules", json=body, headers=jwt)
            assert r.status_code == 201, r.text
            made.append(r.json()["memory_mb"])
        assert made == [1024, 1024, 768, 512]
        sent = [c.memory_mb for name, c in fake_agent.recorder.calls if name == "create_sandbox"]
        assert sent == [1024, 1024, 768, 512]
        assert api.post("/v1/capsules", json={"memory_mb": 64}, headers=jwt).status_code == 400
