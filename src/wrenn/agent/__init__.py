"""The host agent (`wrenn agent`): boots and destroys the microVMs of one server and owns their disks,
networks and snapshots. Its in-memory table of VMs is the truth for its host. It serves the Connect API
in `wrenn.proto.hostagent` and never imports the control plane.
"""

from ._agent import Agent, AgentError
from ._config import AgentConfig

__all__ = ["Agent", "AgentConfig", "AgentError"]
