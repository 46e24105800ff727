"""The parts install with honest dependencies: nothing that serves imports torch."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module, forbidden", [
    ("metalearn_client", ["torch", "onnxruntime", "metalearn_server", "PIL"]),  # Pillow: load_images only
    ("metalearn_client.cli", ["torch", "onnxruntime", "PIL"]),
    ("metalearn_server.app", ["torch", "redis"]),  # redis only with --redis-url (the [redis] extra)
])
def test_imports_stay_light(module, forbidden):
    code = f"import sys, {module}; print([m for m in {forbidden!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_server_help_documents_flags_and_environment():
    result = subprocess.run([sys.executable, "-m", "metalearn_server", "--help"], capture_output=True, text=True,
                            check=True)
    for flag in ("--port", "--metrics-port", "--model-repository", "--providers", "METALEARN_PORT"):
        assert flag in result.stdout


def test_environment_variables_configure_the_server(monkeypatch):
    from metalearn_server.settings import parse

    monkeypatch.setenv("METALEARN_METRICS_PORT", "9555")
    monkeypatch.setenv("METALEARN_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("METALEARN_MAX_SUPPORT_ITEMS", "10")
    settings = parse(["--port", "6000"])
    assert (settings.port, settings.metrics_port) == (6000, 9555)
    assert settings.providers == ("CUDAExecutionProvider", "CPUExecutionProvider")
    assert settings.limits.max_support_items == 10
    assert parse(["--metrics-port", "1"]).metrics_port == 1  # the flag wins
