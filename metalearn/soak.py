"""Soak test: mixed RPCs at concurrency 32 for several minutes against a real server on loopback.

    python -m metalearn.soak --minutes 5        # `make soak`

Every RPC of the API is in the mix (Classify with tensors and with PNG files,
CreateTask/ClassifyTask/DeleteTask, StreamClassifyTask, Embed, ListModels,
GetModel) plus malformed requests that must come back INVALID_ARGUMENT.  Each
window reports throughput, latency percentiles, the server's RSS and any
unexpected outcome.  The run passes when no outcome was unexpected, RSS grew
by at most 10% from the first measured window to the last, and the last window's p99
is within 2× the first's (the first window after a warm-up window, when the run
has three or more).  The report goes to ``docs/benchmarks/soak.md``.
"""
from __future__ import annotations

import argparse
import io
import random
import statistics
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from metalearn.benchmark import SHAPES, ServerProcess, closed_loop, episode_arrays, machine


@dataclass
class Window:
    seconds: float
    requests: int
    p50_ms: float
    p99_ms: float
    rss_mb: float
    unexpected: int


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image[0] * 60 + 128, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def operations(client) -> list[tuple[int, Callable[[], None]]]:
    """(weight, call) pairs; each call raises on an unexpected outcome."""
    from metalearn_client import MetalearnError

    support, labels, queries = episode_arrays(SHAPES[2])
    names = [f"class-{k}" for k in labels]
    support_png, queries_png = [png(i) for i in support], [png(i) for i in queries]

    def task_lifecycle() -> None:
        task = client.create_task(support, names)
        client.classify_task(task.task_id, queries)
        client.delete_task(task.task_id)

    def stream() -> None:
        task = client.create_task(support, names, method="finetune", steps=3)
        assert len(list(client.stream(task.task_id, [queries, queries[:2], queries]))) == 3
        client.delete_task(task.task_id)

    def malformed() -> None:
        try:
            client.classify(support, names[:-1], queries)
        except MetalearnError as error:
            if error.code.name == "INVALID_ARGUMENT":
                return
            raise
        raise AssertionError("a malformed request was accepted")

    return [
        (6, lambda: client.classify(support, names, queries)),
        (2, lambda: client.classify(support, names, queries, method="finetune")),
        (1, lambda: client.classify(support_png, names, queries_png)),
        (2, task_lifecycle),
        (1, stream),
        (1, lambda: client.embed(queries)),
        (1, lambda: (client.list_models(), client.get_model())),
        (1, malformed),
    ]


def soak(minutes: float, concurrency: int, window_seconds: float) -> tuple[list[Window], Counter]:
    from metalearn_client import Client, MetalearnError

    server = ServerProcess([])
    unexpected: Counter = Counter()
    windows: list[Window] = []
    try:
        with Client(server.target, timeout=30) as client:
            weights, calls = zip(*operations(client))
            lock = threading.Lock()

            def one() -> None:
                call = random.choices(calls, weights)[0]
                try:
                    call()
                except (MetalearnError, AssertionError) as error:
                    with lock:
                        unexpected[str(getattr(error, "code", type(error).__name__))] += 1

            end = time.monotonic() + 60 * minutes
            while time.monotonic() < end:
                before = sum(unexpected.values())
                loop = closed_loop(one, concurrency, window_seconds, warmup=0)
                ordered = sorted(loop.latencies)
                windows.append(Window(loop.seconds, loop.completed, 1000 * statistics.median(ordered),
                                      1000 * ordered[int(0.99 * (len(ordered) - 1))], server.rss_mb(),
                                      sum(unexpected.values()) - before))
                w = windows[-1]
                print(f"window {len(windows)}: {w.requests / w.seconds:.0f} req/s, p50 {w.p50_ms:.1f} ms, "
                      f"p99 {w.p99_ms:.1f} ms, RSS {w.rss_mb:.0f} MB, unexpected {w.unexpected}", flush=True)
    finally:
        server.stop()
    return windows, unexpected


def verdict(windows: list[Window], unexpected: Counter) -> list[str]:
    """What failed, if anything.  The first window is the warm-up when there are three or more:
    RSS and p99 are compared from the window after it, as "after warm-up"."""
    first, last = windows[1 if len(windows) >= 3 else 0], windows[-1]
    failures = []
    if unexpected:
        failures.append(f"unexpected outcomes: {dict(unexpected)}")
    if last.rss_mb > 1.10 * first.rss_mb:
        failures.append(f"RSS grew from {first.rss_mb:.0f} to {last.rss_mb:.0f} MB")
    if last.p99_ms > 2 * first.p99_ms:
        failures.append(f"p99 drifted from {first.p99_ms:.1f} to {last.p99_ms:.1f} ms")
    return failures


def report(windows: list[Window], unexpected: Counter, concurrency: int) -> str:
    m = machine()
    total = sum(w.requests for w in windows)
    failures = verdict(windows, unexpected)
    lines = [f"Soak: {total:,} operations (each one to three RPCs) at concurrency {concurrency} over "
             f"{sum(w.seconds for w in windows) / 60:.1f} minutes on {m['cpu']}, {m['cores']} cores. "
             f"Verdict: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}.", "",
             "| window | operations/s | p50 ms | p99 ms | server RSS MB | unexpected |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {w.requests / w.seconds:.0f} | {w.p50_ms:.1f} | {w.p99_ms:.1f} | {w.rss_mb:.0f} | "
              f"{w.unexpected} |" for i, w in enumerate(windows, 1)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/soak.md"))
    args = parser.parse_args(argv)
    windows, unexpected = soak(args.minutes, args.concurrency, args.window_seconds)
    text = report(windows, unexpected, args.concurrency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if verdict(windows, unexpected):
        sys.exit(1)


if __name__ == "__main__":
    main()
