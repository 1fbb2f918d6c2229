"""envd, the agent inside every sandbox VM.

It speaks E2B's envd protocol on TCP 49983, so the official `e2b` SDK works against it:

- `process.Process` (Connect): start, attach to, feed, resize and signal processes, PTY included;
- `filesystem.Filesystem` (Connect): stat, list, make, move, remove and watch paths;
- HTTP: `/health`, `/metrics`, `/envs`, `/init` (from the host), `/files` (streamed transfers),
  `/snapshot/prepare` (before a memory snapshot).

It imports nothing of the server side. Run it with `python -m wrenn.envd` (add `--dev` on a host).
"""

from ._app import Envd
from ._config import DEFAULT_PORT, ENVD_VERSION, EnvdConfig

__all__ = ["DEFAULT_PORT", "ENVD_VERSION", "Envd", "EnvdConfig"]
