"""Shared fixtures and the import path of tests/helpers/: the reference directory (../shared/reference beside the repository)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent  # tests/<feature>/test_*.py import the shared helpers as helpers.<module>
for _p in (REPO_ROOT, TESTS_DIR):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))


def _find_reference_dir() -> Path | None:
    candidates = []
    env = os.environ.get("RELNAS_REFERENCE_DIR")
    if env:
        candidates.append(Path(env).expanduser())
    candidates += [REPO_ROOT.parent / "shared" / "reference", REPO_ROOT / "shared" / "reference"]
    for c in candidates:
        if (c / "decode_cases.json").is_file():
            return c
    return None


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    ref = _find_reference_dir()
    if ref is None:
        pytest.skip("reference fixtures not found (set RELNAS_REFERENCE_DIR or put shared/reference beside the repo)")
    return ref
