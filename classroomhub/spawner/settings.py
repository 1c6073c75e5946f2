"""Which settings a server gets: its owner's tier, then groups, then person.

At each start (and after a hub restart) ClassroomSpawner applies the values
of the owner's tier (`tier_settings`), then JupyterHub's `group_overrides`,
then the owner's own `user_settings`; the keys are its configurable traits.
"""

from __future__ import annotations

from traitlets import Dict, Integer, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..tiers import DEFAULT_TIER, DEFAULT_TIER_SETTINGS, TIERS, tier_of, unknown_tier
from .refusal import SpawnRefused


class TierSettings(LoggingConfigurable):
    """ClassroomSpawner's settings per tier and per person (a mixin of it)."""

    tier_settings = Dict(
        help="""Settings per roster tier: {tier: {trait name: value}}.

        Applied before `group_overrides` and `user_settings`; merged over the
        built-in defaults, so ``{"student": {"mem_limit": "2G"}}`` changes
        only that. Keys are ClassroomSpawner traits such as ``mem_limit``,
        ``cpu_limit``, ``idle_timeout``, ``max_age``, ``kernel_cull_timeout``,
        ``kernel_cull_connected`` and ``named_server_limit``.
        """,
    ).tag(config=True)

    @default("tier_settings")
    def _default_tier_settings(self):
        return {tier: dict(values) for tier, values in DEFAULT_TIER_SETTINGS.items()}

    @validate("tier_settings")
    def _validate_tier_settings(self, proposal):
        merged = {tier: dict(values) for tier, values in DEFAULT_TIER_SETTINGS.items()}
        for tier, values in proposal.value.items():
            if tier not in TIERS:
                raise ValueError(f"tier_settings: {unknown_tier(tier)}")
            self._check_setting_names(f"tier_settings[{tier!r}]", values)
            merged[tier].update(values)
        return merged

    user_settings = Dict(
        help="""Per-user overrides: {login: {trait name: value}}, applied last.

        For the researcher who needs 16G for a term, without a new tier.
        """,
    ).tag(config=True)

    @validate("user_settings")
    def _validate_user_settings(self, proposal):
        result = {}
        for login, values in proposal.value.items():
            self._check_setting_names(f"user_settings[{login!r}]", values)
            result[login.lower()] = values
        return result

    def _check_setting_names(self, where, values):
        unknown = [k for k in values if not self.has_trait(k) or not self.trait_metadata(k, "config")]
        if unknown:
            raise ValueError(f"{where}: {', '.join(map(repr, unknown))} are not configurable spawner traits")

    named_server_limit = Integer(
        0,
        help="""How many named servers this user may run at once (needs
        ``c.JupyterHub.allow_named_servers = True``); 0 allows none.""",
    ).tag(config=True)

    tier = Unicode(DEFAULT_TIER, help="The owner's tier, from their roster group (set at start).")

    async def apply_group_overrides(self):
        self.tier = tier_of(g.name for g in self.user.groups)
        self._apply_overrides(self.tier_settings.get(self.tier, {}))
        await super().apply_group_overrides()
        personal = self.user_settings.get(self.user.name.lower())
        if personal:
            self.log.info("Applying user_settings for %s: %s", self.user.name, ", ".join(personal))
            self._apply_overrides(personal)

    def check_named_server_limit(self):
        """Refuse a named server beyond the tier's `named_server_limit`."""
        if not self.name:
            return
        running = [
            name
            for name, spawner in self.user.spawners.items()
            if name and name != self.name and (spawner.active or spawner.pending)
        ]
        if len(running) >= self.named_server_limit:
            raise SpawnRefused(
                403,
                f"Your tier ({self.tier}) allows {self.named_server_limit} named server(s) at once; "
                f"running: {', '.join(running) or 'none'}. Stop one first."
            )
