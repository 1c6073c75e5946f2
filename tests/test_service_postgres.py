"""test_service's tests again, with the service's database on PostgreSQL.

Same hub, service, system users and tests as test_service.py (whose
fixtures remove their users and data folder at the end of each module, so the
two modules run one after the other in one session); the service is started
with ``--db-url`` pointing at a private PostgreSQL server (tests/postgres.py).
"""

import os

import pytest
from sqlalchemy import create_engine, text

import postgres
import test_service
from postgres import postgres_url  # noqa: F401  (the fixture)
from test_service import *  # noqa: F401,F403  (fixtures, helpers, tests, pytestmark, ROSTER)
from test_service import DATA_DIR, INES, SAM, SUE, material, read, release, home


def HUB_CONFIG(c):
    test_service.HUB_CONFIG(c)
    # the `app` fixture calls this; the session-scoped postgres_url (pulled in
    # by `service_on_postgresql` below) is set up before any module fixture
    if postgres.current_url is None:
        raise RuntimeError("the postgres_url fixture must be set up before the hub")
    (service,) = c.JupyterHub.services
    service["command"] = [*service["command"], "--db-url", postgres.current_url]


@pytest.fixture(scope="module", autouse=True)
def service_on_postgresql(postgres_url):  # noqa: F811
    yield postgres_url


async def test_the_service_stores_in_postgresql(app, ready, postgres_url):  # noqa: F811
    src = material(INES, {"pg.ipynb": "stored in postgres\n"})
    r = await release(app, INES, "pg", source=src, wait=True)
    assert r.status_code == 201, r.text
    assert read(os.path.join(home(SUE), "data101", "pg", "pg.ipynb")) == "stored in postgres\n"
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as db:
            rows = db.execute(text("SELECT course, material, version, created_by FROM releases WHERE material = 'pg'")).all()
            assert [tuple(row) for row in rows] == [("data101", "pg", 1, INES)]
            reports = db.execute(
                text(
                    "SELECT student FROM delivery_reports JOIN releases ON releases.id = release_id"
                    " WHERE material = 'pg' ORDER BY student"
                )
            ).scalars()
            assert list(reports) == sorted([SAM, SUE])
            created = db.execute(
                text("SELECT data_type FROM information_schema.columns WHERE table_name = 'releases' AND column_name = 'created'")
            ).scalar()
            assert created == "timestamp with time zone"
    finally:
        engine.dispose()
    assert not os.path.exists(os.path.join(DATA_DIR, "db", "classroom.sqlite"))
