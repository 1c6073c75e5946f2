"""Roster benchmark.

a. Parse + validate a roster and compute every person's grant, for 100,
   1,000 and 10,000 people in 50 courses. Baseline: PyYAML's own
   ``yaml.safe_load`` of the same file (what any YAML roster must pay).
b. Apply a 1,000-person roster to a running hub (jupyterhub's MockHub with a
   real configurable-http-proxy): first apply, a change touching everyone,
   a no-op. Baseline, same run and same grants: JupyterHub's login path,
   one user at a time (``User.sync_groups`` + ``User.sync_roles``).

Run from the repository root::

    PATH=$PWD/.venv/bin:$PWD/proxy/node_modules/.bin:$PATH python benchmarks/roster.py

Prints medians (each measurement repeated ``--repeat`` times, at least 5)
and ratios; ends with one line per target.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from classroomhub.access import MANAGED_ROLE_PREFIXES, AccessPolicy
from classroomhub.roster import load_roster

COURSES = 50
SIZES = (100, 1_000, 10_000)
HUB_USERS = 1_000
TARGET_APPLY_SECONDS = 2.0


# -- generated rosters ---------------------------------------------------------


def generate_roster(n_users, shift=0, seed=1):
    """YAML for *n_users* people in 50 courses.

    One root (also a third instructor of the first course), a few admins
    (2 instructors per course, round-robin), a tenth power users (3 TAs per
    course), the rest students in 1-2 courses each.
    Everyone has at least one course membership, so *shift* (added to every
    course index) changes every person's groups.
    """
    rng = random.Random(seed)
    logins = [f"user{i:05d}" for i in range(n_users)]
    root, rest = logins[0], logins[1:]
    n_admins = max(5, n_users // 100)
    n_power = max(5, n_users // 10)
    admins, power, students = rest[:n_admins], rest[n_admins : n_admins + n_power], rest[n_admins + n_power :]
    members = {c: {"instructors": [], "tas": [], "students": []} for c in range(COURSES)}
    members[0]["instructors"].append(root)
    for c in range(COURSES):
        members[c]["instructors"] += [admins[(2 * c + j) % n_admins] for j in range(2)]
        members[c]["tas"] += [power[(3 * c + j) % n_power] for j in range(3)]
    teaching = {login for m in members.values() for login in m["tas"]}
    for login in [p for p in power if p not in teaching] + students:
        first = rng.randrange(COURSES)
        chosen = {first}
        if rng.random() < 0.5:
            chosen.add((first + 1 + rng.randrange(COURSES - 1)) % COURSES)
        for c in chosen:
            members[c]["students"].append(login)

    lines = ["users:", f"  {root}: {{tier: root}}"]
    lines += [f"  {login}: admin" for login in admins]
    lines += [f"  {login}: {{tier: power}}" for login in power]
    lines += [f"  {login}: {{}}" for login in students]
    lines.append("courses:")
    for c in range(COURSES):
        lines.append(f"  course{(c + shift) % COURSES:02d}:")
        lines.append(f"    title: Course number {(c + shift) % COURSES}")
        for key, people in members[c].items():
            lines.append(f"    {key}: [{', '.join(people)}]")
    return "\n".join(lines) + "\n"


# -- timing ----------------------------------------------------------------------


def parse_and_grant(path, policy):
    roster = load_roster(path)
    return [policy.grant(roster, login) for login in roster.people]


def median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def ms(seconds):
    return f"{seconds * 1e3:9.1f}"


# -- a. parse + validate + grant --------------------------------------------------


def bench_parse(tmp, repeat):
    print(f"a. parse + validate + grant every person ({COURSES} courses; median of {repeat})")
    print(f"   {'people':>7} {'parse ms':>9} {'grant ms':>9} {'total ms':>9} {'µs/person':>10} {'safe_load ms':>13} {'parse/safe_load':>16}")
    policy = AccessPolicy()
    per_person = {}
    for n in SIZES:
        path = tmp / f"roster-{n}.yaml"
        path.write_text(generate_roster(n))
        roster = load_roster(path)
        assert len(roster) == n, (len(roster), n)
        parse = median_seconds(lambda: load_roster(path), repeat)
        grants = median_seconds(lambda: [policy.grant(roster, login) for login in roster.people], repeat)
        total = median_seconds(lambda: parse_and_grant(path, policy), repeat)
        baseline = median_seconds(lambda: yaml.safe_load(path.read_text()), repeat)
        per_person[n] = total / n
        print(
            f"   {n:>7,} {ms(parse)} {ms(grants)} {ms(total)} {total / n * 1e6:10.1f} "
            f"{ms(baseline):>13} {parse / baseline:16.2f}"
        )
    for small, large in zip(SIZES, SIZES[1:]):
        ratio = per_person[large] / per_person[small]
        print(f"   per-person cost at {large:,} / at {small:,}: {ratio:.2f} (1.00 = linear)")
    return per_person


# -- b. apply to a running hub ------------------------------------------------------


class Hub:
    """A MockHub with the roster authenticator, all files under *tmp*."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.roster_path = tmp / "roster.yaml"
        self.app = None

    async def start(self):
        from jupyterhub.tests.mocking import MockHub
        from traitlets.config import Config

        from classroomhub.authenticator import ClassroomPasswordAuthenticator

        self.roster_path.write_text("users:\n  user00000: root\n")
        cfg = Config()
        cfg.JupyterHub.authenticator_class = ClassroomPasswordAuthenticator
        cfg.JupyterHub.log_level = logging.INFO
        cfg.ConfigurableHTTPProxy.log_level = "error"
        cfg.Authenticator.allow_all = False
        cfg.ClassroomPasswordAuthenticator.roster_path = str(self.roster_path)
        cfg.ClassroomPasswordAuthenticator.user_password = "benchmark-password"
        # no background sync while we time ours
        cfg.ClassroomPasswordAuthenticator.roster_poll_interval = 3600
        self.app = MockHub.instance(config=cfg)
        await self.app.initialize([])
        # a hub logs to a file or journal, not to this table
        self.app.log.propagate = False
        self.app.log.addHandler(logging.FileHandler(self.tmp / "hub.log"))
        await self.app.start()
        self.app.authenticator.stop_roster_watch()

    async def stop(self):
        from jupyterhub.tests.mocking import MockHub

        app, self.app = self.app, None
        if app is None:
            return
        authenticator = getattr(app, "authenticator", None)
        if authenticator is not None:
            authenticator.stop_roster_watch()
        MockHub.clear_instance()
        try:
            await app.stop()
        finally:
            # MockHub.stop leaves the hub's periodic tasks to die with the
            # event loop; their complaints about the stopped proxy go nowhere.
            for handler in list(app.log.handlers):
                app.log.removeHandler(handler)
                handler.close()
            app.log.addHandler(logging.NullHandler())

    @property
    def auth(self):
        return self.app.authenticator

    def use_roster(self, text):
        """Put *text* in force (untimed), as the file watcher would."""
        self.roster_path.write_text(text)
        self.auth.reload_roster(force=True)
        return self.auth.roster

    def reset(self):
        """An empty hub: no users, groups or roster-managed roles."""
        from jupyterhub import orm

        db = self.app.db
        for user in db.query(orm.User):
            db.delete(user)
        for group in db.query(orm.Group):
            db.delete(group)
        for role in db.query(orm.Role):
            if role.managed_by_auth and role.name.startswith(MANAGED_ROLE_PREFIXES):
                db.delete(role)
        db.commit()
        # the cache is keyed by database id, which SQLite reuses
        dict.clear(self.app.users)

    def state(self):
        """Every user's admin flag, groups and roles, to compare end states."""
        from jupyterhub import orm

        return {
            u.name: (bool(u.admin), sorted(g.name for g in u.groups), sorted(r.name for r in u.roles))
            for u in self.app.db.query(orm.User)
        }

    def login_path(self, roster):
        """Apply *roster* the way JupyterHub's login does, user by user."""
        from jupyterhub import orm, roles

        app, db, policy = self.app, self.app.db, self.auth.policy
        for login in roster.people:
            fields = policy.grant(roster, login).auth_fields()
            user = app.users.get(login)
            if user is None:  # first login: as BaseHandler.user_from_username
                orm_user = orm.User(name=login)
                db.add(orm_user)
                roles.assign_default_roles(db, entity=orm_user)
                db.commit()
                user = app.users[orm_user]
            if user.admin != fields["admin"]:
                user.admin = fields["admin"]
            user.sync_groups(fields["groups"])
            user.sync_roles(fields["roles"])
        db.commit()


STEPS = {
    "first": f"(i) first apply ({HUB_USERS:,} new)",
    "change": "(ii) change touching everyone",
    "noop": "(iii) no-op re-apply",
}


class Samples:
    """Seconds and database queries per step, over the repetitions."""

    def __init__(self, hub):
        self.hub = hub
        self.seconds = {step: [] for step in STEPS}
        self.queries = {step: [] for step in STEPS}

    async def measure(self, step, action):
        queries = self.hub.app.db_query_count
        tic = time.perf_counter()
        result = action()
        if asyncio.iscoroutine(result):
            result = await result
        self.seconds[step].append(time.perf_counter() - tic)
        self.queries[step].append(self.hub.app.db_query_count - queries)
        return result

    def median(self, step):
        return statistics.median(self.seconds[step]), statistics.median(self.queries[step])


async def run_ours(hub, ours, before, after):
    """The roster sync: first apply, change everyone, re-apply."""
    hub.reset()
    hub.use_roster(before)
    report = await ours.measure("first", hub.auth.sync_roster)
    assert len(report.created) == HUB_USERS, report
    hub.use_roster(after)
    report = await ours.measure("change", hub.auth.sync_roster)
    assert len(report.changed) == HUB_USERS, report
    state = hub.state()
    report = await ours.measure("noop", hub.auth.sync_roster)
    assert not (report.created or report.changed or report.revoked), report
    return state


async def run_login_path(hub, base, before, after):
    """The same three steps through JupyterHub's per-user login path."""
    hub.reset()
    roster = hub.use_roster(before)
    await base.measure("first", lambda: hub.login_path(roster))
    roster = hub.use_roster(after)
    await base.measure("change", lambda: hub.login_path(roster))
    state = hub.state()
    await base.measure("noop", lambda: hub.login_path(roster))
    return state


async def bench_hub(tmp, repeat):
    print(f"\nb. apply a {HUB_USERS:,}-person roster to a running hub (MockHub + configurable-http-proxy; median of {repeat})")
    before, after = generate_roster(HUB_USERS), generate_roster(HUB_USERS, shift=1)
    hub = Hub(tmp)
    try:
        await hub.start()
        ours, base = Samples(hub), Samples(hub)
        for _ in range(repeat):
            ours_state = await run_ours(hub, ours, before, after)
            base_state = await run_login_path(hub, base, before, after)
            # otherwise the comparison would be meaningless
            assert base_state == ours_state, "the login path must reach the same end state"
    finally:
        await hub.stop()

    print(f"   {'step':<30} {'ours ms':>9} {'queries':>8} {'login path ms':>14} {'queries':>8} {'ours/login path':>16}")
    medians = {}
    for step, label in STEPS.items():
        (o, oq), (b, bq) = ours.median(step), base.median(step)
        medians[step] = o
        print(f"   {label:<30} {ms(o)} {oq:8.0f} {ms(b):>14} {bq:8.0f} {o / b:16.2f}")
    print("   end state after (ii): identical for ours and the login path (checked every run)")
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (at least 5)")
    args = parser.parse_args(argv)
    repeat = max(5, args.repeat)
    if shutil.which("configurable-http-proxy") is None:
        sys.exit("configurable-http-proxy is not on PATH: add proxy/node_modules/.bin (see the docstring)")

    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="classroomhub-bench-") as tmp:
        tmp = Path(tmp)
        # MockHub writes its database, pid file and cookie secret to the
        # temporary-file directory and the working directory: keep both here.
        old_tempdir, tempfile.tempdir = tempfile.tempdir, str(tmp)
        os.chdir(tmp)
        try:
            bench_parse(tmp, repeat)
            medians = asyncio.run(bench_hub(tmp, repeat))
        finally:
            os.chdir(cwd)
            tempfile.tempdir = old_tempdir

    print()
    for key, label in (("first", "first apply"), ("change", "change touching everyone")):
        seconds = medians[key]
        verdict = "met" if seconds <= TARGET_APPLY_SECONDS else "NOT met"
        print(f"target {HUB_USERS:,}-person {label} <= {TARGET_APPLY_SECONDS:g} s: {verdict} ({seconds:.3f} s)")


if __name__ == "__main__":
    main()
