"""GitHub teams and organizations as tiers (``ClassroomGitHubAuthenticator.team_tiers``).

A key ``org:team`` names a team, a key ``org`` a whole organization. Teams
are read from the person's own ``/user/teams`` (needs the ``read:org``
scope); an organization's membership is asked of GitHub once per key.
"""

from __future__ import annotations

from ..tiers import TIERS, higher_tier, unknown_tier


def normalize_team_tiers(mapping):
    """*mapping* with lower-case keys and tiers; ValueError naming an unknown tier."""
    normalized = {}
    for team, tier in mapping.items():
        if tier.lower() not in TIERS:
            raise ValueError(f"team_tiers[{team!r}]: {unknown_tier(tier)}")
        normalized[team.lower()] = tier.lower()
    return normalized


async def team_tier(authenticator, github_login, token):
    """The highest tier *authenticator*'s ``team_tiers`` give *github_login*
    (None: none), asked of GitHub with the login's OAuth *token* response."""
    team_tiers = authenticator.team_tiers
    best = None
    wanted_teams = {k: v for k, v in team_tiers.items() if ":" in k}
    if wanted_teams:
        teams = await authenticator._paginated_fetch(
            f"{authenticator.github_api}/user/teams?per_page=100",
            token["access_token"],
            token["token_type"],
        )
        for team in teams:
            key = f"{team['organization']['login']}:{team['slug']}".lower()
            best = higher_tier(best, wanted_teams.get(key))
    headers = authenticator.build_userdata_request_headers(token["access_token"], token["token_type"])
    for org, tier in team_tiers.items():
        if ":" in org:
            continue
        resp = await authenticator.httpfetch(
            f"{authenticator.github_api}/orgs/{org}/members/{github_login}",
            parse_json=False,
            raise_error=False,
            method="GET",
            headers=headers,
            validate_cert=authenticator.validate_server_cert,
        )
        if resp.code == 204:
            best = higher_tier(best, tier)
    return best
