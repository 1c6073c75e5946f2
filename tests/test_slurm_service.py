"""The classroom service with servers on Slurm: a student added to a course
after a release gets it in their home from the real classroom service
before their server's job is submitted (``classroom_service_url``; the homes
are shared, the nodes run on this machine), as with ClassroomSpawner.

A module of its own: the service lives for a module (tests/fixtures/service.py),
and so does the cluster (tests/fixtures/slurm.py).
"""

import os
import secrets
from datetime import datetime

import pytest
from jupyterhub.utils import random_port

from classroomhub.synchook import access_scope

from conftest import write_roster
from fixtures.slurm import slurm_hub_config, start_server, stop_server
from service_hub import data_dir, home, hub_config, material, read, release

pytestmark = pytest.mark.root("starts a Slurm cluster, the classroom service and servers as system users")
E2E_FIXTURES = {"slurm_cluster"}

TAG = "sl" + secrets.token_hex(2)
INES, SAM, LATE = (f"{TAG}-{n}" for n in ("ines", "sam", "late"))
PEOPLE = [INES, SAM, LATE]
PORT = random_port()
DATA_DIR = data_dir(TAG)

ROSTER = f"""\
users:
  admin: {{tier: root}}
  {LATE}: {{}}
courses:
  data101:
    instructors: [{INES}]
    students: [{SAM}]
"""
JOINED = ROSTER.replace(f"students: [{SAM}]", f"students: [{SAM}, {LATE}]")


def HUB_CONFIG(c):
    hub_config(c, DATA_DIR, PORT)
    slurm_hub_config(c)
    # MockHub's base URL (/@/space%20word/) is in the service's public URL
    c.ClassroomSlurmSpawner.classroom_service_url = f"http://127.0.0.1:{PORT}/@/space%20word/services/classroom/"
    c.ClassroomPasswordAuthenticator.everyone_scopes = [access_scope()]


@pytest.fixture(scope="module", autouse=True)
def cluster(slurm_cluster, monkeypatch_module):
    monkeypatch_module.setenv("SLURM_CONF", slurm_cluster.conf)
    return slurm_cluster


async def test_a_late_joiner_gets_the_release_before_the_job_is_submitted(app, ready, cluster, roster_file):
    r = await release(app, INES, "week1", source=material(INES, {"hw1.ipynb": "hw1\n"}), wait=True)
    assert r.status_code == 201, r.text
    assert [rep["student"] for rep in r.json()["reports"]] == [SAM]
    notebook = os.path.join(home(LATE), "data101", "week1", "hw1.ipynb")
    assert not os.path.exists(notebook)

    write_roster(roster_file, JOINED)  # LATE joins the course after the release
    app.authenticator.reload_roster(force=True)
    await app.authenticator.sync_roster()
    assert not os.path.exists(notebook)  # joining alone delivers nothing: the start does
    spawner = await start_server(app, LATE)
    try:
        assert read(notebook) == "hw1\n"
        assert os.stat(notebook).st_uid == os.stat(home(LATE)).st_uid
        # written before sbatch (Slurm's times are whole seconds, in local time)
        submitted = datetime.fromisoformat(cluster.job(spawner.job_id)["SubmitTime"]).timestamp()
        assert os.stat(notebook).st_mtime < submitted + 1
    finally:
        await stop_server(app, LATE)
