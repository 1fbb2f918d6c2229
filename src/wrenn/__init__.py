"""Wrenn: self-hostable microVM sandboxes for AI agents.

The processes live in sub-packages and meet only in `wrenn.proto`:

- `wrenn.envd`: the agent inside every sandbox VM (E2B-compatible wire protocol).
- `wrenn.agent`: the host agent that boots and owns the VMs of one server.
- `wrenn.controlplane`: the REST API, scheduler and database.
- `wrenn.sdk`, `wrenn.cli`: the Python SDK and the `wrenn` command.
"""

__version__ = "0.1.0"
