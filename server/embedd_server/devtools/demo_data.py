"""A deterministic outdoor-gear catalogue for the demo `public.products` table."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import NamedTuple

DEFAULT_ROWS = 5000
_SEED = 20260313


class Product(NamedTuple):
    id: int
    name: str
    description: str
    category: str
    price: float
    in_stock: bool


# category -> (item nouns, base price range)
_CATALOGUE: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "outerwear": (("Jacket", "Parka", "Shell", "Anorak", "Vest", "Softshell"), (60, 420)),
    "base-layers": (("Base Layer", "Thermal Top", "Leggings", "Crew", "Hoodie"), (25, 140)),
    "footwear": (("Hiking Boots", "Trail Runners", "Approach Shoes", "Sandals", "Gaiters"), (40, 260)),
    "camping": (("Tent", "Sleeping Bag", "Sleeping Pad", "Stove", "Lantern", "Camp Chair"), (20, 650)),
    "climbing": (("Harness", "Rope", "Chalk Bag", "Helmet", "Belay Device", "Quickdraw Set"), (15, 320)),
    "bags": (("Daypack", "Backpack", "Duffel", "Hip Pack", "Dry Bag"), (20, 300)),
    "accessories": (("Gloves", "Beanie", "Buff", "Sunglasses", "Trekking Poles", "Headlamp"), (10, 160)),
}
_ADJECTIVES = (
    "Alpine",
    "Summit",
    "Ridge",
    "Trail",
    "Glacier",
    "Canyon",
    "Coastal",
    "Boreal",
    "Storm",
    "Desert",
    "Tundra",
    "Cascade",
    "Highland",
    "Arctic",
    "Forest",
    "Granite",
    "Meadow",
    "Nordic",
)
_MATERIALS = (
    "Fleece",
    "Merino Wool",
    "Down",
    "Gore-Tex",
    "Ripstop Nylon",
    "Recycled Polyester",
    "Canvas",
    "Leather",
    "Synthetic",
    "Cotton",
    "Titanium",
    "Aluminium",
)
_USES = (
    "for cold-weather hiking",
    "for alpine climbing",
    "for rainy city commutes",
    "for desert treks",
    "for winter camping",
    "for fast-and-light trail running",
    "for multi-day backpacking",
    "for everyday wear",
    "for ski touring",
    "for coastal walks",
)
_FEATURES = (
    "wind-resistant outer layer",
    "moisture-wicking fabric",
    "taped seams",
    "packable design",
    "reinforced stitching",
    "breathable mesh panels",
    "adjustable fit",
    "reflective details",
    "water-repellent finish",
    "lightweight frame",
    "insulated lining",
    "odour-resistant treatment",
)

# The two rows the seed page shows in its query response.
_FIXED = {
    4821: Product(
        4821,
        "Alpine Fleece Jacket",
        "Lightweight fleece jacket with wind-resistant outer layer",
        "outerwear",
        129.99,
        True,
    ),
    7733: Product(
        7733,
        "Merino Wool Base Layer",
        "Moisture-wicking merino wool top for cold-weather hiking",
        "base-layers",
        89.00,
        True,
    ),
}


def products(rows: int = DEFAULT_ROWS) -> Iterator[Product]:
    """Rows with ids 1..rows (ids 4821 and 7733 are the seed's examples when in range)."""
    rnd = random.Random(_SEED)  # noqa: S311 - deterministic demo data, not security
    categories = sorted(_CATALOGUE)
    for pid in range(1, rows + 1):
        category = rnd.choice(categories)
        nouns, (low, high) = _CATALOGUE[category]
        noun, adjective, material = rnd.choice(nouns), rnd.choice(_ADJECTIVES), rnd.choice(_MATERIALS)
        feature_a, feature_b = rnd.sample(_FEATURES, 2)
        description = f"{material} {noun.lower()} {rnd.choice(_USES)}, with {feature_a} and {feature_b}."
        price = round(rnd.uniform(low, high), 2)
        in_stock = rnd.random() < 0.8
        yield _FIXED.get(pid) or Product(
            pid, f"{adjective} {material} {noun}", description, category, price, in_stock
        )


SCHEMA = """
CREATE TABLE IF NOT EXISTS public.products (
    id           integer PRIMARY KEY,
    name         text NOT NULL,
    description  text,
    category     text NOT NULL,
    price        numeric(10, 2) NOT NULL,
    in_stock     boolean NOT NULL DEFAULT true,
    updated_at   timestamptz NOT NULL DEFAULT now()
)
"""
