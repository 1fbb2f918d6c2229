"""The languages the server runs: each one's Jupyter kernel and the snippets the server sends it (working
directory, env vars, reseeding). Values reach a kernel only as literals of its language, never spliced in."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}$")


class UnknownLanguage(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Language:
    name: str
    kernel: str

    def chdir(self, path: str) -> str:
        if self.name == "python":
            return f"import os as _wrenn_os; _wrenn_os.chdir({path!r}); del _wrenn_os"
        return f"cd {shlex.quote(path)}"

    def set_env(self, values: dict[str, str]) -> str:
        if self.name == "python":
            return f"import os as _wrenn_os; _wrenn_os.environ.update({values!r}); del _wrenn_os"
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())

    def unset_env(self, names: list[str]) -> str:
        if self.name == "python":
            return (
                "import os as _wrenn_os\n"
                f"for _wrenn_k in {names!r}: _wrenn_os.environ.pop(_wrenn_k, None)\n"
                "del _wrenn_os, _wrenn_k"
            )
        return "unset " + " ".join(names)

    def reseed(self) -> str:
        """Fresh seeds for the language's generators, drawn from the (already reseeded) kernel pool."""
        if self.name == "python":
            return (
                "def _wrenn_reseed():\n"
                "    import random, sys\n"
                "    random.seed()\n"
                "    numpy = sys.modules.get('numpy')\n"
                "    if numpy is not None:\n"
                "        numpy.random.seed()\n"
                "_wrenn_reseed(); del _wrenn_reseed"
            )
        return "RANDOM=$(od -An -N4 -tu4 /dev/urandom)"


#: Language names and their aliases (E2B's), by the name the server reports.
LANGUAGES: dict[str, Language] = {
    "python": Language("python", "python3"),
    "bash": Language("bash", "bash"),
}
ALIASES: dict[str, str] = {"python3": "python", "py": "python", "sh": "bash", "shell": "bash"}


def resolve(name: str | None) -> Language:
    """The language of `name` (None: Python). UnknownLanguage names what is available."""
    key = (name or "python").strip().lower()
    key = ALIASES.get(key, key)
    language = LANGUAGES.get(key)
    if language is None:
        known = ", ".join(sorted(LANGUAGES))
        raise UnknownLanguage(f"language {name!r} is not supported by this sandbox (supported: {known})")
    return language


def check_env(values: object) -> dict[str, str]:
    """Env vars as the request gave them: names of letters, digits and _, string values."""
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError("env_vars must be an object of strings")
    for key, value in values.items():
        if not isinstance(key, str) or not ENV_NAME.match(key):
            raise ValueError(f"env var name {str(key)[:80]!r} is not a valid name ([A-Za-z_][A-Za-z0-9_]*)")
        if not isinstance(value, str) or "\0" in value:
            raise ValueError(f"env var {key} must be a string without NUL bytes")
    return dict(values)
