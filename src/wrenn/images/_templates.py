"""Template recipes: what goes into a guest image besides the kernel and envd."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Debian release and debootstrap variant every template starts from.
SUITE = "bookworm"
VARIANT = "minbase"

#: In every image: what envd and a sandbox user need. netbase gives /etc/services and /etc/protocols.
BASE_PACKAGES: tuple[str, ...] = (
    "python3",
    "git",
    "curl",
    "ca-certificates",
    "sudo",
    "socat",
    "procps",
    "iproute2",
    "tini",
    "netbase",
)


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    #: Debian packages on top of minbase (installed by debootstrap --include, so their dependencies too).
    packages: tuple[str, ...]
    #: Let `pip install` write to the system Python (drop Debian's PEP 668 EXTERNALLY-MANAGED marker):
    #: a sandbox is disposable and users expect `pip install x` to just work, as on E2B.
    pip_system_install: bool = False

    def recipe(self) -> dict[str, Any]:
        """Everything about the template that changes the image (an input to the version hash)."""
        return {"suite": SUITE, "variant": VARIANT, **asdict(self)}


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            name="minimal",
            description="Debian bookworm minbase with Python 3.11, git, curl, sudo and envd",
            packages=BASE_PACKAGES,
        ),
        # numpy and pandas come from Debian rather than pip: they are built for exactly this Python,
        # land in the system dist-packages (envd's private /opt/wrenn/site stays separate), come out of
        # the same cached debootstrap, and a user's `pip install -U numpy` still overrides them.
        Template(
            name="python",
            description="minimal plus pip, venv, numpy and pandas",
            packages=(*BASE_PACKAGES, "python3-pip", "python3-venv", "python3-numpy", "python3-pandas"),
            pip_system_install=True,
        ),
    )
}


def get(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown template {name!r} (known: {', '.join(sorted(TEMPLATES))})") from None
