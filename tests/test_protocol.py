"""The protocol stays lint-clean and never breaks its released form silently (buf, from PyPI's buf-bin)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parents[1] / "protos"
BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")


def buf(*args: str) -> subprocess.CompletedProcess:
    if BUF is None:
        pytest.fail("buf is missing: `make test` installs it (PyPI package buf-bin, in the dev extras)")
    return subprocess.run([BUF, *args], cwd=PROTOS, capture_output=True, text=True, timeout=120)


def test_buf_lint():
    result = buf("lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_the_released_protocol():
    """protos/released/metalearn-v1.binpb is the image of the last released protos; rebuild it on a release."""
    result = buf("breaking", "--against", "released/metalearn-v1.binpb")
    assert result.returncode == 0, result.stdout + result.stderr


def test_breaking_changes_are_caught(tmp_path):
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    fewshot = copy / "metalearn" / "v1" / "fewshot.proto"
    fewshot.write_text(fewshot.read_text().replace("uint32 top_k = 8;", "uint32 top_k = 18;"))
    result = subprocess.run([BUF, "breaking", "--against", "released/metalearn-v1.binpb"], cwd=copy,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "top_k" in result.stdout + result.stderr
