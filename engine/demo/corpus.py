"""The demo's pretraining corpus: English prose from the Python standard library.

Every Python install ships its standard library as source, so its docstrings
give a few megabytes of real English text without downloading anything. The
text differs a little between Python versions, which is why the base model's
README records the version it was built with.
"""

from __future__ import annotations

import ast
import random
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from engine.demo.tasks import TASKS, make_task

# Test suites are mostly code and fixtures, not prose; site-packages is not stdlib.
_SKIP_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__"}
_MIN_DOC_CHARS = 40
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_docstrings(max_chars: int = 2_000_000) -> list[str]:
    """Docstrings of the standard library's modules, classes and functions.

    Files are read in sorted order so the result is the same on every run on a
    given Python; reading stops once ``max_chars`` characters are collected.
    """
    docs: list[str] = []
    total = 0
    for path in _stdlib_files():
        for doc in _file_docstrings(path):
            docs.append(doc)
            total += len(doc)
        if total >= max_chars:
            break
    return docs


def stdlib_docstrings_by_module(packages: tuple[str, ...] = ()) -> Iterator[tuple[str, str]]:
    """(dotted module name, docstring) for every docstring of the standard library (or of the
    top-level `packages` given), in sorted file order: a real corpus on every machine, with its
    topics named (tests and benchmarks of data selection use it)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in _stdlib_files():
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        if packages and module.split(".")[0] not in packages:
            continue
        for doc in _file_docstrings(path):
            yield module, doc


def pretraining_documents(task_examples_per_task: int, seed: int, skip: int) -> list[str]:
    """Stdlib docstrings mixed with a few task examples, shuffled.

    Task examples are taken after the first ``skip`` of each task's stream (the
    part the bundled train/eval files use), so the base never sees a prompt that
    is later used for fine-tuning or evaluation.
    """
    docs = stdlib_docstrings()
    for name in TASKS:
        stream = make_task(name, skip + task_examples_per_task, seed)[skip:]
        docs.extend(ex["prompt"] + ex["completion"] for ex in stream)
    random.Random(seed).shuffle(docs)
    return docs


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if not _SKIP_DIRS.intersection(path.relative_to(root).parts):
            yield path


def _file_docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return  # a few stdlib files are deliberately invalid or not UTF-8
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= _MIN_DOC_CHARS:
                yield doc
