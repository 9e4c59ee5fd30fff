"""Every benchmark still imports: they run outside `make test`, so a moved name would
otherwise surface only when someone runs `make bench-*` (bench-query once imported a
constant that had moved to sinks/pgvector_store.py)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

from tests.harness import ROOT

BENCHES = sorted(m.name for m in pkgutil.iter_modules([str(ROOT / "bench")]) if m.name.startswith("bench_"))


def test_there_are_benchmarks() -> None:
    assert {"bench_backfill", "bench_query", "bench_sync", "bench_managed"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_benchmark_imports(name: str) -> None:
    importlib.import_module(f"bench.{name}")
