"""Alembic's environment for the service's database, driven from
:mod:`classroomhub.service.db.migrations` (no alembic.ini): the caller hands
over an open connection in ``config.attributes["connection"]``."""

from alembic import context

from classroomhub.service.db.models import Base

connection = context.config.attributes["connection"]
# batch mode: SQLite can alter a table only by copying it
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
