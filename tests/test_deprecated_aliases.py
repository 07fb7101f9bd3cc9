"""Deprecated aliases: lipsim_metric.train.{attacks,baselines,robustness} -> evaluation, lipsim_metric.io -> images."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

MOVED = {f"lipsim_metric.train.{name}": f"lipsim_metric.evaluation.{name}" for name in ["attacks", "baselines",
                                                                                      "robustness"]}
MOVED["lipsim_metric.io"] = "lipsim_metric.images"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.mark.parametrize(("old_path", "new_path"), sorted(MOVED.items()))
def test_old_path_warns_and_reexports_the_same_objects(old_path: str, new_path: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    new = importlib.import_module(new_path)
    monkeypatch.delitem(sys.modules, old_path, raising=False)
    with pytest.warns(DeprecationWarning, match=new_path):
        old = importlib.import_module(old_path)
    assert old is not new and sorted(old.__all__) == sorted(new.__all__)
    for public in new.__all__:
        assert getattr(old, public) is getattr(new, public)
    private = next(n for n, v in vars(new).items() if n.startswith("_") and not n.startswith("__") and callable(v))
    assert getattr(old, private) is getattr(new, private)  # private helpers are forwarded too


def test_old_robustness_command_still_runs() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "lipsim_metric.train.robustness", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--triplets" in done.stdout and "lipsim_metric.evaluation.robustness" in done.stdout
