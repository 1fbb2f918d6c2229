"""The Dockerfile instructions that map onto template steps, and the errors for the rest."""

from __future__ import annotations

import pytest

from wrenn.cli._dockerfile import DockerfileError, parse


def test_instructions_map_onto_steps() -> None:
    parsed = parse(
        "# comment\n"
        "FROM minimal\n"
        "ENV A=1 B='two words'\n"
        "ENV C three\n"
        "RUN apt-get update && \\\n"
        "    apt-get install -y curl\n"
        'RUN ["echo", "a b"]\n'
        "COPY --chown=user:user --chmod=755 app bin/tool /opt/app/\n"
        "WORKDIR /opt/app\n"
        "USER user\n"
        'ENTRYPOINT ["python3", "-m", "http.server"]\n'
        "HEALTHCHECK --interval=5s CMD curl -sf localhost:8000\n"
    )
    assert parsed.base == "minimal"
    assert parsed.steps == [
        {"type": "ENV", "args": ["A", "1", "B", "two words"]},
        {"type": "ENV", "args": ["C", "three"]},
        {"type": "RUN", "args": ["apt-get update &&  apt-get install -y curl"]},
        {"type": "RUN", "args": ["echo 'a b'"]},
        {"type": "COPY", "args": ["app", "/opt/app/", "user:user", "755"]},
        {"type": "COPY", "args": ["bin/tool", "/opt/app/", "user:user", "755"]},
        {"type": "WORKDIR", "args": ["/opt/app"]},
        {"type": "USER", "args": ["user"]},
    ]
    assert parsed.start_cmd == "python3 -m http.server"
    assert parsed.ready_cmd == "curl -sf localhost:8000"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("RUN true\n", "line 1: the first instruction is FROM"),
        ("FROM a\nFROM b\n", "line 2: one FROM only"),
        ("FROM a\nADD x /y\n", "line 2: ADD is not supported"),
        ("FROM a\n\nARG V=1\n", "line 3: ARG is not supported"),
        ("FROM a\nCOPY ../secret /x\n", "line 2: COPY ../secret"),
        ("FROM a\nCOPY --from=build /a /b\n", "line 2: COPY --from=build is not supported"),
        ("FROM a\nHEALTHCHECK NONE\n", "line 2: HEALTHCHECK"),
        ("", "no FROM"),
    ],
)
def test_other_instructions_are_errors_naming_their_line(text: str, words: str) -> None:
    with pytest.raises(DockerfileError, match=words):
        parse(text)
