"""Organisation tiers and their limits (docs/limits.md, from Embedd's published plans).

Rate limits apply in both modes; table and vector limits to managed mode only (platform
mode's vectors live in the user's own database). `None` means unlimited. An organisation may
carry its own request limit, which overrides its tier's (enterprise contracts, the dev stack).
"""

from __future__ import annotations

from dataclasses import dataclass

from embedd_server.domain.errors import ApiError, Kind

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


def vector_budget(tier_name: str, used: int) -> int | None:
    """Managed vectors an organisation may still add, having `used`; None: unlimited."""
    cap = TIERS[tier_name].max_vectors
    return None if cap is None else max(cap - used, 0)


def table_limit_reached(t: Tier) -> ApiError:
    return ApiError(
        Kind.PERMISSION_DENIED,
        "tier_limit_reached",
        f"The organisation's {t.name!r} tier allows {t.max_tables} managed vector tables and "
        "they are all in use. Delete a managed vector table you no longer need, use platform "
        "mode (the vectors stay in your own database; no table limit), or ask the service's "
        "operator to move the organisation to a larger tier.",
    )


def skipped_warning(tier_name: str, skipped: int) -> str:
    """Why a table's rows are missing, and what brings them in."""
    cap = TIERS[tier_name].max_vectors
    limit = f"allows {cap:,} managed vectors" if cap is not None else "now has no vector limit"
    return (
        f"{skipped:,} source rows are not stored: the organisation's vector budget was used up "
        f"(its {tier_name!r} tier {limit}). Free vectors (delete managed tables you no longer "
        "need) or move to a larger tier; sync then stores the skipped rows by itself."
    )
