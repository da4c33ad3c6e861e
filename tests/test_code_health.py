"""The architecture and the code style, checked by their tools: a broken import-linter contract
or a ruff finding fails the suite with the tool's own report."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run_tool(*command: str) -> subprocess.CompletedProcess:
    tool = BIN / command[0]
    if not tool.is_file():
        pytest.fail(f"{command[0]} is not installed beside {sys.executable}; run scripts/setup")
    return subprocess.run([str(tool), *command[1:]], cwd=ROOT, capture_output=True, text=True)


def test_import_contracts_hold():
    """The layers and forbidden imports of pyproject.toml's [tool.importlinter]."""
    result = run_tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = run_tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_is_formatted():
    result = run_tool("ruff", "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr
