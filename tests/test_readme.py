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
def test_python_blocks_run(index: int) -> None:
    code = _blocks("python")[index]
    torch.manual_seed(0)
    # names the loss snippet assumes from the surrounding training loop
    namespace = {"device": "cpu", "output": torch.rand(2, 3, 64, 64, requires_grad=True),
                 "target": torch.rand(2, 3, 64, 64)}
    exec(compile(code, f"README.md python block {index}", "exec"), namespace)  # noqa: S102


def test_shell_commands_are_installed() -> None:
    commands = {line.split()[0] for block in _blocks("bash") for line in block.splitlines() if line.strip()}
    assert {"pip", "lipsim-score", "python"} <= commands
    assert shutil.which("lipsim-score") is not None, "install the package: pip install -e '.[dev]'"
