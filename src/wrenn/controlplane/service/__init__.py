"""The service layer: what the control plane does, below every dialect that asks for it.

    routes/ (/v1, E2B's API, WebSockets), the traffic proxy, the host monitor
        -> service (accounts, capsule lifecycle, templates, work inside a capsule)
            -> the database (db) and the host agents (AgentPool)

Routes translate HTTP to calls of these and back; they hold no lifecycle logic of their own and never
import one another.
"""

from . import quotas
from .accounts import AccountService
from .builds import BuildService, BuildWorker
from .capsules import DEFAULTS, CapsuleService, CreateSpec
from .guest import Guest, file_entry
from .network import E2BNetworkUpdate, NetworkBody, NetworkService, NetworkSpec
from .templates import NAME as TEMPLATE_NAME
from .templates import TemplateService

__all__ = [
    "DEFAULTS",
    "TEMPLATE_NAME",
    "AccountService",
    "BuildService",
    "BuildWorker",
    "CapsuleService",
    "CreateSpec",
    "E2BNetworkUpdate",
    "Guest",
    "NetworkBody",
    "NetworkService",
    "NetworkSpec",
    "TemplateService",
    "file_entry",
    "quotas",
]
