"""The control plane: REST API, users, teams, keys, hosts, scheduler and reconciler (`wrenn server`).

Stateless: every piece of state lives in the database (SQLite by default, PostgreSQL via DATABASE_URL).
It reaches host agents only through the Connect API in `wrenn.proto.hostagent`.
"""

from ._app import create_app
from ._settings import Settings

__all__ = ["Settings", "create_app"]
