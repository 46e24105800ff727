"""Latency and throughput of the text model: metalearn over gRPC against its in-process limit.

    python -m metalearn.benchmark_text            # part of `make bench`

The shape is the images' headline one: a 5-way 5-shot episode with 75
queries, here CLINC150 test requests (held-out domains).  As in
:mod:`metalearn.benchmark`, closed-loop clients for a fixed time per cell:
**limit** runs the episode in-process on the served model's sessions (the
tokenizer, the backbone, the heads), **metalearn** sends it with the Python
client over gRPC on loopback.  The ratios are the images' targets: end-to-end
p50 over the limit at concurrency 1, throughput at concurrency 16 over the
limit's best, and ``ClassifyTask`` over ``Embed`` of the same queries.
Results go to ``docs/benchmarks/<name>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import numpy as np

from metalearn import clinc
from metalearn.benchmark import Cell, ServerProcess, Shape, closed_loop, machine, summarise, write_report

MODEL = "text-minilm"
EPISODE = Shape("text 5-way 5-shot, 75 queries", 5, 5, 75)
TASK = Shape("text ClassifyTask, 5-way 5-shot task, 75 queries", 5, 5, 75, task=True)
EMBED = Shape("text Embed, 75 queries", 5, 5, 75)
TARGETS = {
    "e2e_p50_over_limit_c1": ("end-to-end p50 / limit p50, concurrency 1", "≤ 1.25"),
    "e2e_throughput_c16_over_limit_best": ("end-to-end throughput at concurrency 16 / limit's best throughput",
                                           "≥ 0.8"),
    "classify_task_over_embed_grpc": ("ClassifyTask p50 / Embed of the same queries p50, both over gRPC", "≤ 1.1"),
}


def episode_texts(seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """Support texts, their labels 0 … ways-1, and the query texts of one test episode."""
    data = clinc.load("test")
    texts, _ = data.flat()
    episode = clinc.TextEpisodeSampler(data, EPISODE.ways, EPISODE.shots, EPISODE.queries // EPISODE.ways,
                                       seed=seed).sample()
    return [texts[i] for i in episode.support], episode.support_labels, [texts[i] for i in episode.query]


def run(seconds: float, warmup: float, concurrency: tuple[int, ...], server_args: list[str]) -> dict:
    from metalearn_client import Client, Texts
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    model = ModelRepository(BUNDLED_REPOSITORY, resolve_providers(["CPUExecutionProvider"])).get(MODEL, "")
    support, targets, queries = episode_texts()
    labels = [f"intent-{k}" for k in targets]
    onehot = np.eye(EPISODE.ways, dtype=np.float32)[targets]
    distance = model.config.default_distance

    def limit() -> object:
        embeddings = model.embed(support + queries)
        head = model.build_head(embeddings[: len(support)], onehot, distance, None)
        return model.score(embeddings[len(support):], head)

    server = ServerProcess(server_args)
    cells: list[Cell] = []
    try:
        with Client(server.target, timeout=60.0) as client:
            task = client.create_task(Texts(support), labels, model=MODEL, ttl_seconds=3600)
            systems = [
                ("limit", EPISODE, limit, concurrency),
                ("metalearn", EPISODE, lambda: client.classify(Texts(support), labels, Texts(queries), model=MODEL),
                 concurrency),
                ("metalearn", TASK, lambda: client.classify_task(task.task_id, Texts(queries)), (1,)),
                ("metalearn", EMBED, lambda: client.embed(Texts(queries), model=MODEL), (1,)),
            ]
            for name, shape, call, levels in systems:
                for c in levels:
                    cell = summarise(name, shape, c, closed_loop(call, c, seconds, warmup))
                    cells.append(cell)
                    print(f"{name:9s} {shape.name:50s} c={c:<3d} p50 {cell.p50_ms:7.2f} ms  "
                          f"{cell.throughput:8.1f} req/s", flush=True)
    finally:
        server.stop()

    def find(system: str, shape: Shape, c: int) -> Cell:
        return next(x for x in cells if (x.system, x.shape, x.concurrency) == (system, shape.name, c))

    limit_best = max(x.throughput for x in cells if x.system == "limit") or float("nan")  # a window too short
    ratios = {
        "e2e_p50_over_limit_c1": find("metalearn", EPISODE, 1).p50_ms / find("limit", EPISODE, 1).p50_ms,
        "e2e_throughput_c16_over_limit_best": find("metalearn", EPISODE, 16).throughput / limit_best,
        "classify_task_over_embed_grpc": find("metalearn", TASK, 1).p50_ms / find("metalearn", EMBED, 1).p50_ms,
    }
    return {"model": f"{model.name} version {model.version}", "cells": [asdict(c) for c in cells], "ratios": ratios,
            "machine": machine(), "settings": {"seconds": seconds, "warmup": warmup, "server_args": server_args}}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Model: {result['model']}. Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}. "
             f"{result['settings']['seconds']} s per cell after {result['settings']['warmup']} s warm-up; "
             "closed-loop clients.", "", "| ratio | target | measured |", "| --- | --- | --- |"]
    lines += [f"| {TARGETS[key][0]} | {TARGETS[key][1]} | {value:.2f}× |" for key, value in result["ratios"].items()]
    lines += ["", "| shape | system | concurrency | p50 ms | p95 ms | p99 ms | req/s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c['shape']} | {c['system']} | {c['concurrency']} | {c['p50_ms']:.2f} | {c['p95_ms']:.2f} | "
              f"{c['p99_ms']:.2f} | {c['throughput']:.1f} |" for c in result["cells"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # An episode of 100 texts takes about 0.4 s here, so a round of 16 concurrent ones about 7 s: the window
    # must hold several rounds for a throughput to mean anything.
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time per cell")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--name", default="cpu-text")
    parser.add_argument("--server-arg", action="append", default=[], help="extra metalearn-server flag (repeatable)")
    args = parser.parse_args(argv)
    result = run(args.seconds, args.warmup, (1, 16), args.server_arg)
    write_report(args.out, args.name, result, markdown)


if __name__ == "__main__":
    main()
