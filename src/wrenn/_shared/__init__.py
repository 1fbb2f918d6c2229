"""What the server-side processes share besides the wire contracts in `wrenn.proto`: small, self-contained
helpers that know nothing of any one process.

- `logs`: structured logging (standard library only; envd and the guest-side servers use it too).
- `asgiproxy`: a streamed reverse proxy in raw ASGI (HTTP and WebSocket), for the agent's traffic
  listener and the control plane's traffic proxy.
- `private`: files and directories only their owner may read (0600/0700 from the start).

Nothing here imports a process package (`controlplane`, `agent`, `envd`, `sdk`, `cli`, `images`); this
`__init__` imports nothing at all, so a guest that needs `logs` does not pull in the proxy's
dependencies. The layering is enforced by import-linter contracts in `pyproject.toml`.
"""
