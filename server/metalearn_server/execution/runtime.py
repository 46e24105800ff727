"""ONNX Runtime sessions with explicit execution providers.

ONNX Runtime silently lists providers such as ``AzureExecutionProvider`` that
cannot run a model, so the server never relies on its default choice: the
caller (``--providers``) gives an order of preference, the providers this
build of ONNX Runtime lacks are dropped with a log line, and the CPU provider
always closes the list as the fallback.
"""
from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
#: CUDA first where the installed ONNX Runtime has it (onnxruntime-gpu), the CPU otherwise.
#: TensorRT is used only when ``--providers`` names it: its engine builds take minutes.
DEFAULT_PREFERENCE = ("CUDAExecutionProvider", CPU)


def resolve_providers(preference: tuple[str, ...] | list[str]) -> list[str]:
    """The preferred providers this ONNX Runtime build offers, in order, CPU last."""
    available = set(ort.get_available_providers())
    chosen = []
    for name in preference:
        if name in available and name not in chosen:
            chosen.append(name)
        elif name not in available:
            log.info("execution provider %s is not available in this onnxruntime build; skipped", name)
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def create_session(path: Path, providers: list[str], intra_op_threads: int = 0) -> ort.InferenceSession:
    """One session per ONNX file, created once at model load and shared by all requests."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
