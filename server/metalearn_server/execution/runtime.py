"""ONNX Runtime sessions with explicit execution providers.

ONNX Runtime silently lists providers such as ``AzureExecutionProvider`` that
cannot run a model, so the server never relies on its default choice: the
caller (``--providers``) gives an order of preference, the providers this
build of ONNX Runtime lacks are dropped with a log line, and the CPU provider
always closes the list as the fallback.
"""
from __future__ import annotations

import contextvars
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
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


def create_session(path: Path, providers: list[str], intra_op_threads: int = 0,
                   memory_arena: bool = True) -> ort.InferenceSession:
    """One session per ONNX file, created once at model load and shared by all requests.

    ``memory_arena``: keep ONNX Runtime's CPU arena, which holds on to the largest buffers any run needed.
    It pays where every run's buffers have the same bounded size (the backbone, whose batches are chunked:
    twice as fast here as allocating each run); a head's buffers grow with the request (a maximal request's
    left the arena hundreds of megabytes larger for good), so the heads allocate per run instead."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = memory_arena
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)


#: The ONNX Runtime run options of the model work this thread is doing, set by the scheduler
#: (:mod:`~metalearn_server.scheduling.model_work`) so that a cancelled request's calls can be stopped
#: without the execution layer knowing why.
run_options: contextvars.ContextVar[ort.RunOptions | None] = contextvars.ContextVar("run_options", default=None)


def run(session: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]:
    """Every output of ``session`` on ``feeds``, under the current work's run options."""
    return session.run(None, feeds, run_options.get())
