"""The seed's recipe format, as the steps of a build (docs/templates.md):

    RUN [--timeout=<duration>] <shell command>
    START <shell command>          the template's start command (runs in its ready snapshot)
    ENV K=V [K2=V2 ...]
    WORKDIR <path>
    USER <name>                    created when missing
    COPY <src>... <dest>           from the build's archive

and a healthcheck, `[--interval=3s] [--timeout=10s] [--start-period=0] [--retries=0] <command>`, which
becomes the ready command. Blank lines and `#` comments are skipped; anything else is an error naming its
line.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


class RecipeError(ValueError):
    pass


def duration(text: str, line: int) -> float:
    match = _DURATION.match(text)
    if not match:
        raise RecipeError(f"line {line}: {text!r} is not a duration (e.g. 30s, 5m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _flags(rest: str, line: int, allowed: tuple[str, ...]) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    while rest.startswith("--"):
        word, _, rest = rest.partition(" ")
        name, _, value = word[2:].partition("=")
        if name not in allowed:
            raise RecipeError(f"line {line}: unknown option --{name}")
        flags[name] = value
        rest = rest.lstrip()
    return flags, rest


def parse(lines: list[str] | str, healthcheck: str = "", archive_hash: str = "") -> dict[str, Any]:
    """A build spec (E2B's shape: steps, startCmd, readyCmd) from recipe lines."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    steps: list[dict[str, Any]] = []
    starts: list[str] = []
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        word, _, rest = text.partition(" ")
        instruction, rest = word.upper(), rest.strip()
        if not rest:
            raise RecipeError(f"line {number}: {instruction} needs an argument")
        if instruction == "RUN":
            flags, command = _flags(rest, number, ("timeout",))
            step: dict[str, Any] = {"type": "RUN", "args": [command]}
            if "timeout" in flags:
                step["timeoutSec"] = max(1, int(duration(flags["timeout"], number)))
            steps.append(step)
        elif instruction == "START":
            starts.append(rest)
        elif instruction == "ENV":
            args: list[str] = []
            for pair in shlex.split(rest):
                key, sep, value = pair.partition("=")
                if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
                    raise RecipeError(f"line {number}: ENV takes NAME=value pairs")
                args += [key, value]
            steps.append({"type": "ENV", "args": args})
        elif instruction in ("WORKDIR", "USER"):
            steps.append({"type": instruction, "args": [rest]})
        elif instruction == "COPY":
            words = shlex.split(rest)
            if len(words) < 2:
                raise RecipeError(f"line {number}: COPY <src>... <dest>")
            if not archive_hash:
                raise RecipeError(f"line {number}: COPY needs the build's archive")
            for src in words[:-1]:
                if src.startswith("/") or ".." in src.split("/"):
                    raise RecipeError(f"line {number}: COPY sources are inside the archive")
                steps.append({"type": "COPY", "args": [src, words[-1], "", ""], "filesHash": archive_hash})
        else:
            raise RecipeError(
                f"line {number}: unknown instruction {word!r} (RUN, START, ENV, WORKDIR, USER, COPY)"
            )
    spec: dict[str, Any] = {"steps": steps, "startCmd": " & ".join(starts) if starts else ""}
    if healthcheck.strip():
        flags, command = _flags(healthcheck.strip(), 0, ("interval", "timeout", "start-period", "retries"))
        if not command:
            raise RecipeError("the healthcheck has no command")
        spec["readyCmd"] = command
        period = duration(flags.get("start-period", "0"), 0)
        spec["readyTimeoutSec"] = int(period + duration(flags.get("timeout", "10s"), 0) * 30) or 300
    return spec
