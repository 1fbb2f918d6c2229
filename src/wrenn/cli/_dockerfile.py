"""A Dockerfile as the steps of a template build (docs/templates.md). The instructions that map onto steps:

    FROM <base>                         a base image (minimal), one of the team's templates (name[:tag]) or,
                                        with a `/`, an image of an OCI registry (docker.io/library/alpine:3)
    RUN <command> | RUN ["exe", "arg"]
    COPY [--chown=user[:group]] [--chmod=mode] <src>... <dest>
    ENV <name>=<value>... | ENV <name> <value>
    WORKDIR <path>
    USER <name>
    CMD / ENTRYPOINT <command>          the template's start command (the last one counts)
    HEALTHCHECK [options] CMD <command> its ready command

Comments, blank lines and `\\` continuations as Docker reads them. Any other instruction (ADD, ARG, EXPOSE,
...) is an error naming its line: a template is not an OCI image, and Wrenn does not pretend it is.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from typing import Any


class DockerfileError(ValueError):
    pass


@dataclass
class Parsed:
    base: str = ""
    steps: list[dict[str, Any]] = field(default_factory=list)
    start_cmd: str = ""
    ready_cmd: str = ""

    def config(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "base_template": self.base, "steps": self.steps}
        if self.start_cmd:
            out["start_cmd"] = self.start_cmd
        if self.ready_cmd:
            out["ready_cmd"] = self.ready_cmd
        return out


def _lines(text: str) -> list[tuple[int, str]]:
    """Logical lines (continuations joined) with the number of the line each starts on."""
    out: list[tuple[int, str]] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        out.append((start, buffer + stripped))
        buffer = ""
    if buffer:
        out.append((start, buffer.strip()))
    return out


def _command(rest: str, number: int) -> str:
    """A shell command from either form: `cmd args` or `["exe", "arg"]`."""
    if rest.startswith("["):
        try:
            words = json.loads(rest)
        except ValueError:
            raise DockerfileError(f"line {number}: the JSON form is not a JSON list of strings") from None
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise DockerfileError(f"line {number}: the JSON form is a list of strings")
        return shlex.join(words)
    return rest


def parse(text: str) -> Parsed:
    parsed = Parsed()
    for number, line in _lines(text):
        word, _, rest = line.partition(" ")
        instruction, rest = word.upper(), rest.strip()
        if not rest:
            raise DockerfileError(f"line {number}: {instruction} needs an argument")
        if instruction == "FROM":
            if parsed.base:
                raise DockerfileError(f"line {number}: one FROM only (multi-stage builds are not templates)")
            parsed.base = rest.split()[0]
        elif not parsed.base:
            raise DockerfileError(f"line {number}: the first instruction is FROM")
        elif instruction == "RUN":
            parsed.steps.append({"type": "RUN", "args": [_command(rest, number)]})
        elif instruction == "COPY":
            parsed.steps += _copy(rest, number)
        elif instruction == "ENV":
            parsed.steps.append({"type": "ENV", "args": _env(rest, number)})
        elif instruction in ("WORKDIR", "USER"):
            parsed.steps.append({"type": instruction, "args": [rest]})
        elif instruction in ("CMD", "ENTRYPOINT"):
            parsed.start_cmd = _command(rest, number)
        elif instruction == "HEALTHCHECK":
            words = rest.split()
            while words and words[0].startswith("--"):
                words.pop(0)
            if not words or words[0].upper() != "CMD" or len(words) < 2:
                raise DockerfileError(f"line {number}: HEALTHCHECK [options] CMD <command>")
            parsed.ready_cmd = _command(rest[rest.upper().index("CMD") + 3 :].strip(), number)
        else:
            raise DockerfileError(
                f"line {number}: {word} is not supported in a template "
                "(FROM, RUN, COPY, ENV, WORKDIR, USER, CMD, ENTRYPOINT, HEALTHCHECK)"
            )
    if not parsed.base:
        raise DockerfileError("the Dockerfile has no FROM")
    return parsed


def _copy(rest: str, number: int) -> list[dict[str, Any]]:
    words = shlex.split(rest) if not rest.startswith("[") else json.loads(rest)
    owner = mode = ""
    while words and words[0].startswith("--"):
        flag = words.pop(0)
        if flag.startswith("--chown="):
            owner = flag.split("=", 1)[1]
        elif flag.startswith("--chmod="):
            mode = flag.split("=", 1)[1]
            if not re.fullmatch(r"0?[0-7]{3,4}", mode):
                raise DockerfileError(f"line {number}: --chmod takes an octal mode")
        else:
            raise DockerfileError(f"line {number}: COPY {flag} is not supported (--chown, --chmod)")
    if len(words) < 2:
        raise DockerfileError(f"line {number}: COPY <src>... <dest>")
    steps = []
    for src in words[:-1]:
        if src.startswith("/") or ".." in src.split("/"):
            raise DockerfileError(f"line {number}: COPY {src}: sources are inside the build context")
        steps.append({"type": "COPY", "args": [src, words[-1], owner, mode]})
    return steps


def _env(rest: str, number: int) -> list[str]:
    words = shlex.split(rest)
    if words and "=" not in words[0]:
        return [words[0], rest[len(words[0]) :].strip()]
    args: list[str] = []
    for pair in words:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise DockerfileError(f"line {number}: ENV takes NAME=value pairs")
        args += [key, value]
    return args
