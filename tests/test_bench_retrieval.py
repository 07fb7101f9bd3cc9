"""Smoke test of ``benchmarks/bench_retrieval.py`` (speed is never asserted; the figures come from running it)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_retrieval.py"


def test_one_small_size_runs_and_reports() -> None:
    spec = importlib.util.spec_from_file_location("lipsim_bench_retrieval", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    row = bench.bench_size(n=600, dim=32, queries=4, exact_queries=2, k=8, chunk=250, seed=0)
    assert row["n"] == 600 and row["index_mib"] == pytest.approx(600 * 32 * 4 / 2**20)
    assert 0 < row["radius_ratio_median"] <= 1  # the top-k certificate never exceeds the exhaustive one
    args = argparse.Namespace(threads=1, queries=4, k=8, exact_queries=2)
    table = bench.to_markdown([row], args)
    assert "| 600 |" in table and "radius FAISS/exact" in table
