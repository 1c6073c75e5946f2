"""ClassroomKubeSpawner, checked on the pod manifest KubeSpawner itself builds.

No cluster runs here: each test builds the real spawner for a person whose
JupyterHub groups come from a real roster (through ``AccessPolicy``, as at a
login), applies the settings as JupyterHub does before a start
(``apply_group_overrides``) and reads ``get_pod_manifest()``, the manifest
KubeSpawner would send to the API server. The only stand-ins are the hub and
user objects the spawner reads names and URLs from, and a kubeconfig naming
an API server that is never contacted (KubeSpawner loads one when it is
built).

``classroomhub kube-values`` turns a ``jupyterhub_config.py`` into Zero to
JupyterHub values: they parse, carry the tiers, and the spawner configured
from them builds the same pods.
"""

import os
from types import SimpleNamespace

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import kube_config
from traitlets.config import Config

from classroomhub.access import AccessPolicy
from classroomhub.cli import main
from classroomhub.environments.layout import Layout, write_json_atomic
from classroomhub.kubernetes import IMAGE_PATH, ClassroomKubeSpawner
from classroomhub.roster import parse_roster
from classroomhub.spawner.refusal import SpawnRefused
from classroomhub.tiers import DEFAULT_TIER_SETTINGS

GiB = 1024**3

ROSTER = """\
users:
  kira: {tier: power}
  olga: {tier: admin}
courses:
  data101:
    instructors: [olga]
    students: [sam]
"""
DEMOTED = ROSTER.replace("kira: {tier: power}", "kira: {}")

RESEARCH_POOL = {"pool": "research"}
RESEARCH_TOLERATION = {"key": "research", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
TIER_SETTINGS = {
    "power": {"mem_limit": "6G", "cpu_limit": 4, "node_selector": RESEARCH_POOL, "tolerations": [RESEARCH_TOLERATION]},
}


@pytest.fixture(scope="module", autouse=True)
def kubeconfig(tmp_path_factory):
    """A kubeconfig KubeSpawner loads when it is built; its server is never contacted."""
    path = tmp_path_factory.mktemp("kube") / "config"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "none", "user": {"token": "unused"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    with pytest.MonkeyPatch.context() as mp:
        # read from $KUBECONFIG when kubernetes_asyncio is imported, so set here
        mp.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
        yield path


@pytest.fixture
def environments(tmp_path):
    """A data folder with two shared environments in force: one for everyone
    (the default), one for data101 (laid out as ``classroomhub env`` leaves them)."""
    layout = Layout(tmp_path / "environments")
    for name, audience, default in (("base", ["everyone"], True), ("data101", ["course:data101"], False)):
        os.makedirs(layout.kernels_dir(name, 1))
        write_json_atomic(layout.declaration(name), {"name": name, "packages": ["ipykernel"], "audience": audience, "default": default})
        layout.switch(name, 1)
    return tmp_path


def person(roster_text, login):
    """A hub user as the spawner sees it, with the groups a login gives them."""
    grant = AccessPolicy().grant(parse_roster(roster_text), login)
    return SimpleNamespace(
        name=login, id=7, url=f"/user/{login}/", groups=[SimpleNamespace(name=g) for g in grant.groups], spawners={}
    )


def make_spawner(user, **config):
    hub = SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/hub/", api_url="http://hub:8081/hub/api")
    return ClassroomKubeSpawner(user=user, hub=hub, tier_settings=TIER_SETTINGS, **config)


async def manifest(spawner):
    """What KubeSpawner would create for the next start, as the API's JSON."""
    await spawner.apply_group_overrides()
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)


def container(pod):
    (server,) = pod["spec"]["containers"]
    return server


def env(pod):
    return {e["name"]: e["value"] for e in container(pod)["env"] if "value" in e}


async def test_a_students_pod_gets_the_student_tier():
    pod = await manifest(make_spawner(person(ROSTER, "sam")))
    student = DEFAULT_TIER_SETTINGS["student"]
    resources = container(pod)["resources"]
    # memory request = limit: the pod is never evicted for using what it was given
    assert resources["limits"] == {"memory": student["mem_limit"], "cpu": 1.0}
    assert resources["requests"] == {"memory": student["mem_limit"], "cpu": 0.25}
    assert env(pod)["MEM_LIMIT"] == str(student["mem_limit"])
    assert env(pod)["CPU_LIMIT"] == "1.0"
    assert "PATH" not in env(pod)  # no shared environment: the image's own PATH
    assert pod["spec"]["activeDeadlineSeconds"] == student["max_age"]
    args = container(pod)["args"] if "args" in container(pod) else container(pod)["command"]
    assert "jupyterhub-singleuser" in args[0]
    assert f"--ServerApp.shutdown_no_activity_timeout={student['idle_timeout']}" in args
    assert f"--MappingKernelManager.cull_idle_timeout={student['kernel_cull_timeout']}" in args
    assert "--MappingKernelManager.cull_connected=True" in args
    assert "nodeSelector" not in pod["spec"]
    assert "tolerations" not in pod["spec"]


async def test_a_server_runs_as_a_user_that_cannot_gain_privileges():
    pod = await manifest(make_spawner(person(ROSTER, "sam")))
    security = container(pod)["securityContext"]
    assert security["runAsUser"] == 1000
    assert security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert "privileged" not in security or security["privileged"] is False
    assert pod["spec"]["securityContext"]["fsGroup"] == 100
    with pytest.raises(Exception, match="never runs as root"):
        make_spawner(person(ROSTER, "sam"), uid=0)


async def test_a_power_users_pod_gets_their_tier_and_node_pool():
    pod = await manifest(make_spawner(person(ROSTER, "kira")))
    resources = container(pod)["resources"]
    assert resources["limits"] == {"memory": 6 * GiB, "cpu": 4}
    assert resources["requests"] == {"memory": 6 * GiB, "cpu": 1.0}
    assert env(pod)["MEM_LIMIT"] == str(6 * GiB)
    assert pod["spec"]["nodeSelector"] == RESEARCH_POOL
    assert pod["spec"]["tolerations"] == [RESEARCH_TOLERATION]
    assert pod["spec"]["activeDeadlineSeconds"] == DEFAULT_TIER_SETTINGS["power"]["max_age"]
    power = DEFAULT_TIER_SETTINGS["power"]
    assert f"--MappingKernelManager.cull_idle_timeout={power['kernel_cull_timeout']}" in container(pod)["args"]
    assert "--MappingKernelManager.cull_connected=False" in container(pod)["args"]


async def test_an_instructor_gets_the_courses_environments_read_only_and_the_shared_data(environments):
    data_volume = {"persistentVolumeClaim": {"claimName": "course-data"}}
    envs_volume = {"persistentVolumeClaim": {"claimName": "classroom-environments"}}
    spawner = make_spawner(
        person(ROSTER, "olga"),
        environments_data_dir=str(environments),
        environments_volume=envs_volume,
        shared_data_volume=data_volume,
    )
    pod = await manifest(spawner)
    admin = DEFAULT_TIER_SETTINGS["admin"]
    assert container(pod)["resources"]["limits"]["memory"] == admin["mem_limit"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in container(pod)["volumeMounts"]}
    assert volumes["classroom-environments"]["persistentVolumeClaim"] == envs_volume["persistentVolumeClaim"]
    assert mounts["classroom-environments"] == {
        "name": "classroom-environments",
        "mountPath": str(environments / "environments"),
        "readOnly": True,
    }
    assert volumes["classroom-data"]["persistentVolumeClaim"] == data_volume["persistentVolumeClaim"]
    assert mounts["classroom-data"] == {"name": "classroom-data", "mountPath": "/home/jovyan/data", "readOnly": True}
    # the instructor of data101 is offered its kernel and base's, base first on the image's PATH
    kernels = env(pod)["JUPYTER_PATH"].split(":")
    layout = Layout(environments / "environments")
    assert kernels == [layout.kernels_dir(n) for n in ("base", "data101")]
    assert kernels[0].startswith(mounts["classroom-environments"]["mountPath"] + "/")
    assert env(pod)["PATH"] == f"{environments}/environments/base/1/bin:{IMAGE_PATH}"
    # the command is the image's jupyterhub-singleuser, not a path on the hub
    assert container(pod)["args"][0] == "jupyterhub-singleuser"


async def test_someone_outside_the_course_is_not_offered_its_environment(environments):
    spawner = make_spawner(person(ROSTER, "kira"), environments_data_dir=str(environments), environments_volume={"emptyDir": {}})
    pod = await manifest(spawner)
    assert env(pod)["JUPYTER_PATH"] == Layout(environments / "environments").kernels_dir("base")


async def test_a_course_image_comes_from_a_group_override():
    override = {"data101": {"groups": ["course-data101-students"], "spawner_override": {"image": "registry.example.edu/data101:2026"}}}
    pod = await manifest(make_spawner(person(ROSTER, "sam"), group_overrides=override, image="quay.io/jupyter/base-notebook:2026-01"))
    assert container(pod)["image"] == "registry.example.edu/data101:2026"
    pod = await manifest(make_spawner(person(ROSTER, "kira"), group_overrides=override, image="quay.io/jupyter/base-notebook:2026-01"))
    assert container(pod)["image"] == "quay.io/jupyter/base-notebook:2026-01"


async def test_a_demotion_changes_the_next_manifest():
    """The same spawner object (JupyterHub keeps it between starts) after the
    roster demotes its owner: the student tier's limits, and no research pool."""
    spawner = make_spawner(person(ROSTER, "kira"))
    pod = await manifest(spawner)
    assert pod["spec"]["nodeSelector"] == RESEARCH_POOL
    spawner.user.groups = person(DEMOTED, "kira").groups
    pod = await manifest(spawner)
    student = DEFAULT_TIER_SETTINGS["student"]
    assert spawner.tier == "student"
    assert container(pod)["resources"]["limits"] == {"memory": student["mem_limit"], "cpu": 1.0}
    assert container(pod)["resources"]["requests"]["memory"] == student["mem_limit"]
    assert "nodeSelector" not in pod["spec"]
    assert "tolerations" not in pod["spec"]
    assert pod["spec"]["activeDeadlineSeconds"] == student["max_age"]


async def test_a_persons_own_settings_come_last():
    spawner = make_spawner(person(ROSTER, "sam"), user_settings={"sam": {"mem_limit": "3G", "cpu_guarantee_fraction": 1}})
    pod = await manifest(spawner)
    assert container(pod)["resources"]["limits"]["memory"] == 3 * GiB
    assert container(pod)["resources"]["requests"] == {"memory": 3 * GiB, "cpu": 1.0}


async def test_named_servers_beyond_the_tier_are_refused_before_a_pod_exists():
    named = SimpleNamespace(name="extra", server=None)  # the hub's record of a named server
    with pytest.raises(SpawnRefused, match=r"Your tier \(student\) allows 0 named server"):
        await manifest(make_spawner(person(ROSTER, "sam"), orm_spawner=named))
    pod = await manifest(make_spawner(person(ROSTER, "kira"), orm_spawner=named))  # power: 3
    assert env(pod)["JUPYTERHUB_SERVER_NAME"] == "extra"


HUB_CONFIG = """\
c = get_config()
c.JupyterHub.authenticator_class = "classroom-github"
# the one-machine settings: the tier keys carry over, the cgroup-only ones do not
c.ClassroomSpawner.tier_settings = {"student": {"mem_limit": "2G", "pressure_min_idle": 60}}
c.ClassroomSpawner.user_settings = {"Sam": {"mem_limit": "3G", "pressure_min_idle": 600}}
c.ClassroomKubeSpawner.tier_settings = {"power": {"cpu_limit": 3, "node_selector": {"pool": "research"}}}
c.ClassroomKubeSpawner.environments_data_dir = "/srv/classroomhub"
c.ClassroomKubeSpawner.environments_volume = {"persistentVolumeClaim": {"claimName": "classroom-environments"}}
"""


@pytest.fixture
def hub_config(tmp_path):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text(HUB_CONFIG)
    return path


def kube_values(path, capsys):
    assert main(["kube-values", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Zero to JupyterHub values for classroomhub.kubernetes.ClassroomKubeSpawner")
    assert "&id" not in out  # no YAML aliases: a person edits this file
    return yaml.safe_load(out)


async def test_the_chart_values_carry_the_tiers_and_give_the_same_pods(hub_config, capsys):
    values = kube_values(hub_config, capsys)
    hub_config_section = values["hub"]["config"]
    assert hub_config_section["JupyterHub"] == {
        "spawner_class": "classroomhub.kubernetes.ClassroomKubeSpawner",
        "authenticator_class": "classroom-github",
    }
    tiers = hub_config_section["ClassroomKubeSpawner"]["tier_settings"]
    assert tiers["student"] == {**DEFAULT_TIER_SETTINGS["student"], "mem_limit": "2G"}
    assert tiers["power"] == {**DEFAULT_TIER_SETTINGS["power"], "cpu_limit": 3, "node_selector": {"pool": "research"}}
    assert tiers["root"] == DEFAULT_TIER_SETTINGS["root"]
    assert hub_config_section["ClassroomKubeSpawner"]["user_settings"] == {"sam": {"mem_limit": "3G"}}
    # the chart's defaults are the student tier's, memory guaranteed in full
    assert values["singleuser"]["memory"] == {"limit": "2G", "guarantee": "2G"}
    assert values["singleuser"]["cpu"] == {"limit": 1.0, "guarantee": 0.25}
    assert values["singleuser"]["uid"] == 1000
    assert values["cull"] == {"enabled": False}
    assert values["singleuser"]["networkPolicy"]["enabled"] is True
    assert values["hub"]["extraVolumeMounts"] == [
        {"name": "classroom-environments", "mountPath": "/srv/classroomhub/environments", "readOnly": True}
    ]
    # the hub the chart configures builds the same pods: its config section, given to the spawner
    config = Config({"ClassroomKubeSpawner": hub_config_section["ClassroomKubeSpawner"]})
    hub = SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/hub/", api_url="http://hub:8081/hub/api")
    student = ClassroomKubeSpawner(user=person(ROSTER, "sam"), hub=hub, config=config)
    assert container(await manifest(student))["resources"]["limits"] == {"memory": 3 * GiB, "cpu": 1.0}
    classmate = ClassroomKubeSpawner(user=person(ROSTER.replace("[sam]", "[sam, lea]"), "lea"), hub=hub, config=config)
    assert container(await manifest(classmate))["resources"]["limits"] == {"memory": 2 * GiB, "cpu": 1.0}
    power = ClassroomKubeSpawner(user=person(ROSTER, "kira"), hub=hub, config=config)
    pod = await manifest(power)
    assert container(pod)["resources"]["limits"] == {"memory": DEFAULT_TIER_SETTINGS["power"]["mem_limit"], "cpu": 3}
    assert pod["spec"]["nodeSelector"] == {"pool": "research"}


def test_kube_values_refuses_an_unknown_tier(tmp_path, capsys):
    path = tmp_path / "jupyterhub_config.py"
    path.write_text('c = get_config()\nc.ClassroomKubeSpawner.tier_settings = {"tutor": {"mem_limit": "1G"}}\n')
    assert main(["kube-values", "--config", str(path)]) == 2
    assert capsys.readouterr().err == f"classroomhub kube-values: {path}: tier_settings: unknown tier 'tutor' (expected one of root, admin, power, student)\n"


def test_kube_values_names_a_missing_or_broken_configuration(tmp_path, capsys):
    missing = tmp_path / "nothere.py"
    assert main(["kube-values", "--config", str(missing)]) == 2
    assert capsys.readouterr().err == f"classroomhub kube-values: {missing}: no such file\n"
    broken = tmp_path / "jupyterhub_config.py"
    broken.write_text("c = get_config()\nc.JupyterHub.ip = undefined_name\n")
    assert main(["kube-values", "--config", str(broken)]) == 2
    assert capsys.readouterr().err == f"classroomhub kube-values: {broken}: could not be loaded: name 'undefined_name' is not defined\n"
