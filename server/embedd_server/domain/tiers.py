"""Organisation tiers and their limits (docs/limits.md, from Embedd's published plans).

Rate limits apply in both modes; table and vector limits to managed mode only (platform
mode's vectors live in the user's own database). `None` means unlimited. An organisation may
carry its own request limit, which overrides its tier's (enterprise contracts, the dev stack).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_TIER = "free"


@dataclass(frozen=True, slots=True)
class Tier:
    name: str
    max_tables: int | None  # managed vector tables per organisation
    max_vectors: int | None  # managed vectors per organisation (sum of synced rows)
    requests_per_minute: int | None


TIERS: dict[str, Tier] = {
    "free": Tier("free", 3, 100_000, 25),
    "pro": Tier("pro", 5, 500_000, 300),
    "business": Tier("business", 25, 5_000_000, 1_000),
    # Enterprise limits are per contract: unlimited tables and vectors, and the request limit
    # the organisation carries (unlimited when it carries none).
    "enterprise": Tier("enterprise", None, None, None),
}


def tier(name: str) -> Tier:
    """The tier called `name` (the control plane only stores known names)."""
    return TIERS[name]


def requests_per_minute(tier_name: str, override: int | None) -> int | None:
    """The organisation's request limit: its own when it has one, else its tier's."""
    return override if override is not None else TIERS[tier_name].requests_per_minute
