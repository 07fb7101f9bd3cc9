"""The README's Python blocks run as written, and its commands exist (the README is the contract with users)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_blocks_run_as_pasted(index: int) -> None:
    """Each block runs on its own in a fresh namespace: nothing may be assumed from elsewhere."""
    code = _blocks("python")[index]
    torch.manual_seed(0)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})  # noqa: S102


def test_the_three_commands_are_what_ci_runs() -> None:
    block = next(b for b in _blocks("bash") if "python -m pytest -q" in b)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ['pip install -e ".[dev]"', "lipsim-score examples/images/a examples/images/b",
                        "python -m pytest -q"]
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'python -m pip install -e ".[dev]"' in ci and "lipsim-score examples/images/a examples/images/b" in ci
    assert "\npython -m pytest -q\n" in ci
    assert "TIME_TBD" not in README.read_text()


def _tables() -> list[list[str]]:
    """Markdown tables as lists of lines (a table ends at the first line that does not start with '|')."""
    tables, current = [], []
    for line in README.read_text().splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    return tables


def test_weights_table_is_whole_and_lists_every_registered_name() -> None:
    from lipsim_metric import DEFAULT_WEIGHTS, list_pretrained

    table = next(t for t in _tables() if t[0].startswith("| weights | use it when"))
    columns = table[0].count("|")
    assert all(row.count("|") == columns for row in table), "a row of the weights table is broken"
    text = "\n".join(table)
    for name in list_pretrained():
        stem = name.split(".")[0]
        assert f"`{name}`" in text or (stem == "lipsim-paper-small" and "lipsim-paper-small.{" in text), name
    assert f"`{DEFAULT_WEIGHTS}` (**default**)" in text


def test_calibration_table_is_the_generated_one() -> None:
    """The README's calibration table is benchmarks/calibration.py's output (docs/results/calibration)."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("calibration", README.parent / "benchmarks" / "calibration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    document = json.loads((README.parent / "docs" / "results" / "calibration" / "calibration.json").read_text())
    generated = [line for line in module.format_table(document).splitlines() if line.startswith("|")]
    readme = next(t for t in _tables() if t[0].startswith("| distortion | LipSim"))
    assert readme == generated
    assert f"weights `{document['weights']}`" in README.read_text()
    from lipsim_metric import DEFAULT_WEIGHTS

    assert document["weights"] == DEFAULT_WEIGHTS, (
        "the README's calibration table was measured with other weights than the default; rerun "
        "python benchmarks/calibration.py --images ../shared/images/val --teachers-dir ../shared/teachers --count 16 "
        "--out docs/results/calibration/calibration.json and paste its table (python benchmarks/calibration.py "
        "--table-from docs/results/calibration/calibration.json) into the README")


def test_no_lab_notebook_claims() -> None:
    text = README.read_text()
    for phrase in ("targets are met", "git show", "repeats this in every CI run", "0 for identical images",
                   "a few minutes"):
        assert phrase not in text, phrase


def test_shell_commands_are_installed() -> None:
    commands = {line.split()[0] for block in _blocks("bash") for line in block.splitlines() if line.strip()}
    assert {"pip", "lipsim-score", "python"} <= commands
    assert shutil.which("lipsim-score") is not None, "install the package: pip install -e '.[dev]'"
