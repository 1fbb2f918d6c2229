"""Alembic environment: migrations run on a connection handed over by wrenn.controlplane.db.migrate."""

from alembic import context

from wrenn.controlplane.db._models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through wrenn.controlplane.db.migrate (it passes the connection)")
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
