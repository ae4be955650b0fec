"""Static checks in the test suite (hence in CI, which runs the README's pytest command): ruff on the code, the tests
and the benchmarks, with the rules and exceptions of ``[tool.ruff]`` in pyproject.toml, and mypy on the modules listed
in ``[tool.mypy] files`` (a part of the package, not all of it)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


NOT_INSTALLED = "{} is not installed (it is in the test extra: pip install -e .[test])"


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None, reason=NOT_INSTALLED.format("ruff"))
def test_ruff_check_passes():
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "monai_ms", "tests", "benchmarks"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"`ruff check monai_ms tests benchmarks` found problems:\n{result.stdout}{result.stderr}"


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason=NOT_INSTALLED.format("mypy"))
def test_mypy_passes_on_the_type_checked_modules():
    # no arguments: mypy checks the `files` of [tool.mypy] in pyproject.toml
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"mypy ([tool.mypy] files) found problems:\n{result.stdout}{result.stderr}"
