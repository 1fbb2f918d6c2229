"""The languages the server runs: each one's Jupyter kernel and the snippets the server sends it (working
directory, env vars, reseeding). Values reach a kernel only as literals of its language, never spliced in."""

from __future__ import annotations

import json
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
    #: Whose snippets the kernel runs: "python", "bash" or "deno" (JavaScript and TypeScript alike).
    runtime: str
    #: How long a cell's stream waits, once the kernel replied and went idle, for outputs that trail them
    #: (Deno's kernel sends them out of order); 0: the kernel keeps Jupyter's order.
    settle_s: float = 0.0
    #: Languages with the same key share their default context. A Deno kernel costs about 200 MiB
    #: (docs/interpreter.md#memory), so JavaScript and TypeScript cells without a context run in one Deno
    #: kernel (a context made for either with POST /contexts is a kernel of its own).
    shared_default: str | None = None

    @property
    def default_context(self) -> str:
        return self.shared_default or self.name

    def chdir(self, path: str) -> str:
        if self.runtime == "python":
            return f"import os as _wrenn_os; _wrenn_os.chdir({path!r}); del _wrenn_os"
        if self.runtime == "deno":
            return f"Deno.chdir({_js(path)});"
        return f"cd {shlex.quote(path)}"

    def set_env(self, values: dict[str, str]) -> str:
        if self.runtime == "python":
            return f"import os as _wrenn_os; _wrenn_os.environ.update({values!r}); del _wrenn_os"
        if self.runtime == "deno":
            return f"for (const [k, v] of Object.entries({_js(values)})) Deno.env.set(k, v);"
        return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in values.items())

    def unset_env(self, names: list[str]) -> str:
        if self.runtime == "python":
            return (
                "import os as _wrenn_os\n"
                f"for _wrenn_k in {names!r}: _wrenn_os.environ.pop(_wrenn_k, None)\n"
                "del _wrenn_os, _wrenn_k"
            )
        if self.runtime == "deno":
            return f"for (const k of {_js(names)}) Deno.env.delete(k);"
        return "unset " + " ".join(names)

    def reseed(self) -> str:
        """Fresh seeds for the language's generators, drawn from the (already reseeded) kernel pool. V8
        seeds Math.random once per process and has no call to reseed it: a Deno kernel gets a Math.random
        of xoshiro128** seeded from /dev/urandom instead (see docs/interpreter.md)."""
        if self.runtime == "python":
            return (
                "def _wrenn_reseed():\n"
                "    import random, sys\n"
                "    random.seed()\n"
                "    numpy = sys.modules.get('numpy')\n"
                "    if numpy is not None:\n"
                "        numpy.random.seed()\n"
                "_wrenn_reseed(); del _wrenn_reseed"
            )
        if self.runtime == "deno":
            return _JS_RESEED
        return "RANDOM=$(od -An -N4 -tu4 /dev/urandom)"


#: Math.random replaced by xoshiro128** (53-bit doubles from two outputs) seeded from /dev/urandom.
_JS_RESEED = """{
  const s = new Uint32Array(4);
  const f = Deno.openSync("/dev/urandom");
  try { f.readSync(new Uint8Array(s.buffer)); } finally { f.close(); }
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  const next = () => {
    const x = Math.imul(s[1], 5);
    const r = Math.imul((x << 7) | (x >>> 25), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3]; s[2] ^= t;
    s[3] = (s[3] << 11) | (s[3] >>> 21);
    return r;
  };
  Math.random = () => ((next() >>> 5) * 67108864 + (next() >>> 6)) / 9007199254740992;
}"""


def _js(value: object) -> str:
    """A JavaScript literal of `value` (JSON, ASCII only: also U+2028/U+2029 escaped)."""
    return json.dumps(value, ensure_ascii=True)


#: Deno's trailing outputs come within milliseconds natively; the margin is for a guest under emulation.
DENO_SETTLE_S = 0.25

#: Language names and their aliases (E2B's), by the name the server reports. JavaScript and TypeScript
#: both run in Deno's kernel.
LANGUAGES: dict[str, Language] = {
    "python": Language("python", "python3", "python"),
    "bash": Language("bash", "bash", "bash"),
    "javascript": Language("javascript", "deno", "deno", settle_s=DENO_SETTLE_S, shared_default="deno"),
    "typescript": Language("typescript", "deno", "deno", settle_s=DENO_SETTLE_S, shared_default="deno"),
}
ALIASES: dict[str, str] = {
    "python3": "python",
    "py": "python",
    "sh": "bash",
    "shell": "bash",
    "js": "javascript",
    "ts": "typescript",
    "deno": "typescript",  # E2B's earlier template had a "deno" language (its Deno kernel)
}


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
