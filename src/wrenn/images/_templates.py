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


#: The memory (MiB) of a capsule whose create asks for none, unless its template says otherwise.
DEFAULT_MEMORY_MB = 512


@dataclass(frozen=True, slots=True)
class Readiness:
    """What a template's guest must answer before it is ready: `GET http://GUEST:{port}{path}` with a 200.
    The host agent waits for it (after envd answers) before it takes the ready snapshot of a new image, so
    every sandbox restored from that snapshot starts with the template's services up."""

    port: int
    path: str = "/health"
    #: How long a first boot may take to get there (under TCG, starting kernels takes a while).
    timeout_s: float = 300.0


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    description: str
    #: Debian packages on top of minbase (installed by debootstrap --include, so their dependencies too).
    packages: tuple[str, ...]
    #: Let `pip install` write to the system Python (drop Debian's PEP 668 EXTERNALLY-MANAGED marker):
    #: a sandbox is disposable and users expect `pip install x` to just work, as on E2B.
    pip_system_install: bool = False
    #: A directory of `recipes/` with the template's files: `rootfs/` is copied onto the image (an
    #: executable `rootfs/etc/wrenn/start` is the template's start command, run by the guest's init beside
    #: envd) and `requirements.lock` is installed into the guest's system Python (--no-deps, hashes).
    recipe_dir: str | None = None
    #: Guest programs of the wrenn package installed beside envd in /opt/wrenn/site, with the packages of
    #: the wrenn extra of the same name (e.g. "interpreter": the code interpreter's execution server).
    guest_programs: tuple[str, ...] = ()
    #: The template's readiness (None: ready when envd answers).
    ready: Readiness | None = None
    #: Root disk size when the build is not given one (None: DEFAULT_DISK_SIZE).
    disk_size: int | None = None
    #: The memory (MiB) of a capsule whose create asks for none. A shape, not the image's content: not an
    #: input to the version hash.
    memory_mb: int = DEFAULT_MEMORY_MB

    def recipe(self) -> dict[str, Any]:
        """Everything about the template that changes the image (an input to the version hash)."""
        recipe = {"suite": SUITE, "variant": VARIANT, **asdict(self)}
        del recipe["memory_mb"]
        return recipe


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
        # E2B's code-interpreter-v1: Jupyter Server on 8888 and the execution server on 49999 (started by
        # rootfs/etc/wrenn/start), ready once the execution server's default Python kernel is.
        Template(
            name="code-interpreter",
            description="python plus Jupyter, the data stack and the code interpreter's execution server",
            packages=(*BASE_PACKAGES, "python3-pip", "python3-venv"),
            pip_system_install=True,
            recipe_dir="code-interpreter",
            guest_programs=("interpreter",),
            ready=Readiness(port=49999, path="/health", timeout_s=600.0),
            disk_size=4 * 1024**3,
            # The warm Python kernel and a Deno kernel (about 170 MiB of its own) do not both fit in 512
            # MiB: docs/interpreter.md has the measurements. E2B builds its code-interpreter with 2 GiB.
            memory_mb=1024,
        ),
    )
}

#: Other names of base images: E2B's and the seed's names of the code interpreter.
ALIASES: dict[str, str] = {"code-interpreter-v1": "code-interpreter", "code-runner-beta": "code-interpreter"}


def get(name: str) -> Template:
    try:
        return TEMPLATES[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown template {name!r} (known: {', '.join(sorted(TEMPLATES))})") from None
