"""A Zero to JupyterHub ``values.yaml`` from the hub's own configuration.

The chart runs the hub, the proxy and the servers' pods; what a person's
pod gets is still decided by :class:`classroomhub.kubernetes.ClassroomKubeSpawner`
from the same tier settings as on one machine. This module turns a
``jupyterhub_config.py`` into the chart's values that say so: the spawner
class and its settings under ``hub.config``, the chart's single-user
defaults set to the student tier's (what a pod gets before any tier applies),
network policies on, and the chart's activity-only culler off (servers stop
themselves when idle, and pods end at ``max_age``).

It imports neither kubespawner nor JupyterHub: the command that prints the
values works on any machine with the configuration file.
"""

from __future__ import annotations

import copy
import posixpath

from traitlets.config import PyFileConfigLoader

from .tiers import DEFAULT_TIER, DEFAULT_TIER_SETTINGS, TIER_SETTING_KEYS, TIERS, unknown_tier

SPAWNER = "ClassroomKubeSpawner"
SPAWNER_CLASS = "classroomhub.kubernetes.ClassroomKubeSpawner"
#: ClassroomKubeSpawner's own defaults the chart's single-user section repeats
DEFAULT_UID, DEFAULT_FS_GID, DEFAULT_CPU_GUARANTEE_FRACTION = 1000, 100, 0.25


def load_hub_config(path):
    """The traitlets configuration a ``jupyterhub_config.py`` builds."""
    loader = PyFileConfigLoader(str(path))
    return loader.load_config()


def tier_settings(config):
    """Each tier's settings on Kubernetes: the built-in defaults, the keys a
    tier sets on one machine (``ClassroomSpawner.tier_settings``, only the
    tier keys every engine has), then ``ClassroomKubeSpawner.tier_settings``."""
    tiers = {tier: dict(values) for tier, values in DEFAULT_TIER_SETTINGS.items()}
    local = config.ClassroomSpawner.get("tier_settings", {}) if "ClassroomSpawner" in config else {}
    kube = config[SPAWNER].get("tier_settings", {}) if SPAWNER in config else {}
    for source, keys in ((local, TIER_SETTING_KEYS), (kube, None)):
        for tier, values in source.items():
            if tier not in TIERS:
                raise ValueError(f"tier_settings: {unknown_tier(tier)}")
            tiers[tier].update({k: v for k, v in values.items() if keys is None or k in keys})
    return tiers


def user_settings(config):
    """Each person's settings on Kubernetes: the tier keys of
    ``ClassroomSpawner.user_settings``, then ``ClassroomKubeSpawner.user_settings``."""
    people = {}
    local = config.ClassroomSpawner.get("user_settings", {}) if "ClassroomSpawner" in config else {}
    kube = config[SPAWNER].get("user_settings", {}) if SPAWNER in config else {}
    for source, keys in ((local, TIER_SETTING_KEYS), (kube, None)):
        for login, values in source.items():
            carried = {k: v for k, v in values.items() if keys is None or k in keys}
            if carried:
                people.setdefault(login.lower(), {}).update(carried)
    return people


def z2jh_values(config):
    """The chart's values (a dict, ready for ``yaml.safe_dump``) for *config*."""
    kube = copy.deepcopy(dict(config[SPAWNER])) if SPAWNER in config else {}
    kube["tier_settings"] = tiers = tier_settings(config)
    people = user_settings(config)
    if people:
        kube["user_settings"] = people
    hub_config = {"JupyterHub": {"spawner_class": SPAWNER_CLASS}, SPAWNER: kube}
    authenticator = config.JupyterHub.get("authenticator_class") if "JupyterHub" in config else None
    if isinstance(authenticator, str):
        hub_config["JupyterHub"]["authenticator_class"] = authenticator
    base = tiers[DEFAULT_TIER]
    fraction = kube.get("cpu_guarantee_fraction", DEFAULT_CPU_GUARANTEE_FRACTION)
    singleuser = {
        "cmd": "jupyterhub-singleuser",
        "uid": kube.get("uid", DEFAULT_UID),
        "fsGid": kube.get("fs_gid", DEFAULT_FS_GID),
        # before a tier applies; the spawner sets each person's at every start
        "memory": {"limit": base["mem_limit"], "guarantee": base["mem_limit"]},
        "cpu": {"limit": base["cpu_limit"], "guarantee": base["cpu_limit"] * fraction},
        # servers reach the hub and the internet, not the cluster's private addresses
        "networkPolicy": {"enabled": True, "egressAllowRules": {"privateIPs": False}},
    }
    hub = {"config": hub_config, "networkPolicy": {"enabled": True}}
    if kube.get("environments_data_dir") and kube.get("environments_volume"):
        # the hub lists each person's environments: it mounts them where the servers do
        volume = {"name": "classroom-environments", **copy.deepcopy(kube["environments_volume"])}  # no YAML alias
        path = posixpath.join(kube["environments_data_dir"], "environments")
        hub["extraVolumes"] = [volume]
        hub["extraVolumeMounts"] = [{"name": "classroom-environments", "mountPath": path, "readOnly": True}]
    return {
        "hub": hub,
        "proxy": {"chp": {"networkPolicy": {"enabled": True}}},
        "singleuser": singleuser,
        # the chart's culler sees hub activity only; servers stop themselves (idle_timeout)
        "cull": {"enabled": False},
    }

