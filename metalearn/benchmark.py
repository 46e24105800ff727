"""Side-by-side latency and throughput: the ONNX Runtime limit, metalearn over gRPC, eager PyTorch,
and Triton Inference Server serving the same model.

    python -m metalearn.benchmark            # `make bench`

Ways to answer the same few-shot episode, measured in one run on one
machine so that only ratios are compared:

1. **limit**: in-process, straight on the served model's ONNX Runtime sessions
   (backbone, then the heads), no gRPC: what a request cannot beat;
2. **metalearn**: the Python client over gRPC on loopback to a
   ``metalearn-server`` this command starts;
3. **peer**: the episode in eager PyTorch as a tutorial writes it (Conv-4,
   class means, ``cdist``, softmax), the do-it-yourself alternative;
4. **metalearn-v2** and **triton**: the same server's KServe v2 endpoint and a
   real Triton Inference Server (PyTriton, :mod:`metalearn.peer_server`) serving
   the same backbone and ProtoNet head graphs, both driven by one tritonclient
   load (:mod:`metalearn.tritonclient_load`) with the same episode, cell after cell
   in turn; left out, with a note, where ``.venv-peer`` is not installed.

Every cell runs closed-loop clients (``concurrency`` threads, each sending its
next request when the last is answered) for a fixed time after a warm-up.
Results go to ``docs/benchmarks/<name>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from metalearn.data import load_split, to_model_input
from metalearn.episodes import EpisodeSampler

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Shape:
    name: str
    ways: int
    shots: int
    queries: int  # in all, not per class
    task: bool = False  # ClassifyTask on a cached task instead of Classify


SHAPES = (
    Shape("5-way 1-shot, 5 queries", 5, 1, 5),
    Shape("5-way 1-shot, 75 queries", 5, 1, 75),
    Shape("5-way 5-shot, 5 queries", 5, 5, 5),
    Shape("5-way 5-shot, 75 queries", 5, 5, 75),
    Shape("20-way 5-shot, 100 queries", 20, 5, 100),
    Shape("ClassifyTask, 5-way 5-shot task, 75 queries", 5, 5, 75, task=True),
)
CONCURRENCY = (1, 4, 16, 64)
#: Each eager call holds its activations (about 0.5 GB for v3's rotation-ensemble 20-way episode), so 64 peer
#: calls at once exhaust a 24 GiB machine; the peer stops at 16 (its ratio is taken at concurrency 1).
PEER_MAX_CONCURRENCY = 16
#: Windows per cell of the Triton race, taken in turn with the peer's: on this shared host a cell-long slow
#: spell moved one server's p50 by 10-40% (the limit's p50 read 31-59 ms on different evenings).
RACE_ROUNDS = 3
#: The checkout the bench runs in (`make bench`, `make test`): where `make dev` builds the peer's venv and
#: whose metalearn/ sources that venv runs (this module may be imported from an installed copy).
ROOT = Path.cwd()
#: PyTriton and tritonclient, in a venv of their own (`make dev`): they pin their own protobuf and NumPy.
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"


@dataclass
class Cell:
    system: str
    shape: str
    concurrency: int
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    throughput: float  # requests per second
    server_cpu: float | None = None  # CPU-seconds per second (2.0 = both cores busy)
    server_rss_mb: float | None = None


def episode_arrays(shape: Shape, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Support images, labels and queries in the model's input format."""
    data = load_split("evaluation")
    per_class = -(-shape.queries // shape.ways)
    episode = EpisodeSampler(data, shape.ways, shape.shots, per_class, seed=seed).sample()
    return (to_model_input(episode.support), episode.support_labels,
            to_model_input(episode.query[: shape.queries]))


@dataclass
class Loop:
    """What one closed loop measured inside its window."""

    latencies: list[float]  # seconds, of the requests sent inside the window
    completed: int  # answers that arrived inside the window
    seconds: float  # the window's length
    elapsed: float  # from the first request to the last answer, for rates of server CPU time

    @property
    def throughput(self) -> float:
        return self.completed / self.seconds


def closed_loop(call: Callable[[], object], concurrency: int, seconds: float, warmup: float) -> Loop:
    """``concurrency`` clients, each sending its next request when the last is answered.

    The window opens ``warmup`` seconds after the start, and not before every client has had its first
    answer: at concurrency 64 one round of requests can outlast any fixed warm-up.  Throughput counts the
    answers that arrive inside the window, as wrk and ghz do.  Dividing the requests *sent* in the window
    by the time until the last of them is answered would charge one whole latency of drain to the window
    and under-read a 2 s window by a fifth at 500 ms latency.  Latencies are those of the requests sent
    inside the window, at least one per client.
    """
    started = time.perf_counter()
    lock = threading.Lock()
    unanswered = concurrency
    window: tuple[float, float] | None = None
    calls: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def worker(mine: list[tuple[float, float]]) -> None:
        nonlocal unanswered, window
        try:
            while not errors and (window is None or mine[-1][0] < window[0] or time.perf_counter() < window[1]):
                start = time.perf_counter()
                call()
                mine.append((start, time.perf_counter()))
                if len(mine) == 1:
                    with lock:
                        unanswered -= 1
                        if not unanswered:
                            opens = max(started + warmup, time.perf_counter())
                            window = (opens, opens + seconds)
        except BaseException as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(mine,)) for mine in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    assert window is not None
    opens, closes = window
    everything = [c for mine in calls for c in mine]
    return Loop(latencies=[end - start for start, end in everything if start >= opens],
                completed=sum(opens <= end < closes for _, end in everything), seconds=seconds,
                elapsed=max(end for _, end in everything) - started)


def summarise(system: str, shape: Shape, concurrency: int, loop: Loop) -> Cell:
    ordered = sorted(loop.latencies)

    def pct(p: float) -> float:
        return 1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return Cell(system, shape.name, concurrency, len(ordered), 1000 * statistics.median(ordered), pct(0.95),
                pct(0.99), loop.throughput)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A metalearn-server on free loopback ports, with its CPU time and RSS read from /proc."""

    def __init__(self, extra: list[str]) -> None:
        from metalearn_client import Client, MetalearnError

        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "metalearn_server", "--host", "127.0.0.1", "--port", str(self.port),
             "--metrics-port", "0", "--log-level", "WARNING", *extra])
        with Client(self.target, timeout=1.0) as client:
            for _ in range(600):
                try:
                    if client.health() == "SERVING":
                        return
                except MetalearnError:
                    time.sleep(0.1)
        raise RuntimeError("the server did not start")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class TritonPeer:
    """Triton Inference Server (through PyTriton) serving ``version``'s graphs as the model ``name``."""

    def __init__(self, version: Path, name: str, distance: str) -> None:
        import grpc
        from metalearn.kserve.v2 import grpc_service_pb2 as pb
        from metalearn.kserve.v2 import grpc_service_pb2_grpc

        self.port = free_port()
        self.process = subprocess.Popen(
            [str(PEER_PYTHON), str(ROOT / "metalearn" / "peer_server.py"), str(version), "--model-name", name,
             "--distance", distance, "--grpc-port", str(self.port), "--http-port", str(free_port()),
             "--metrics-port", str(free_port())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: Triton and the backend stub go with it
        with grpc.insecure_channel(self.target) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            for _ in range(1200):  # Triton, then the Python backend's stub, start in tens of seconds on 2 cores
                if self.process.poll() is not None:
                    raise RuntimeError(f"the Triton peer exited with {self.process.returncode}")
                try:
                    if stub.ModelReady(pb.ModelReadyRequest(name=name), timeout=1).ready:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the Triton peer did not become ready in 120 s")

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        # peer_server.py stops Triton and its backend and cleans PyTriton's workspace on SIGTERM; if it hangs,
        # the whole group goes.
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def tritonclient_load(target: str, model: str, episode: Path, concurrency: int, seconds: float,
                      warmup: float) -> Loop:
    """One closed loop of :mod:`metalearn.tritonclient_load` (in ``.venv-peer``) against a v2 server."""
    result = subprocess.run(
        [str(PEER_PYTHON), "-m", "metalearn.tritonclient_load", target, model, str(episode), "--concurrency",
         str(concurrency), "--seconds", str(seconds), "--warmup", str(warmup)],
        capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    return Loop(**json.loads(result.stdout))


def save_episode(arrays, path: Path) -> Path:
    """The episode as the tritonclient load reads it, labelled as :func:`metalearn_call` labels it."""
    support, labels, queries = arrays
    np.savez(path, support=support, labels=np.array([f"class-{k}" for k in labels]), queries=queries)
    return path


def limit_call(model, shape: Shape, arrays) -> Callable[[], object]:
    """The episode on the served model's own sessions, in-process."""
    support, labels, queries = arrays
    onehot = np.eye(shape.ways, dtype=np.float32)[labels]
    distance = model.config.default_distance
    if shape.task:
        head = model.build_head(model.embed(support), onehot, distance, None)
        return lambda: model.score(model.embed(queries), head)

    def call() -> object:
        embeddings = model.embed(np.concatenate([support, queries]))
        head = model.build_head(embeddings[: len(support)], onehot, distance, None)
        return model.score(embeddings[len(support) :], head)

    return call


def peer_backbone(model) -> torch.nn.Module:
    """The served backbone's computation in eager PyTorch (weights do not change the cost): the
    architecture its config names, Conv-4 for versions exported before configs named one."""
    from metalearn.backbones import BACKBONES, RotationEnsemble

    architecture = json.loads((model.directory / "config.json").read_text()).get("architecture", {})
    backbone = BACKBONES[architecture.get("backbone", "conv4")]()
    return (RotationEnsemble(backbone) if architecture.get("test_time_rotations") else backbone).eval()


def peer_call(model, shape: Shape, arrays) -> Callable[[], object]:
    """Eager PyTorch, as a tutorial writes a ProtoNet episode on the same network."""
    import torch

    support, labels, queries = (torch.from_numpy(a) for a in arrays)
    backbone = peer_backbone(model)

    @torch.no_grad()
    def call() -> object:
        embeddings = backbone(torch.cat([support, queries]))
        s, q = embeddings[: len(support)], embeddings[len(support) :]
        prototypes = torch.stack([s[labels == k].mean(0) for k in range(shape.ways)])
        return torch.softmax(-torch.cdist(q, prototypes) ** 2, dim=-1)

    return call


def metalearn_call(client, version: str, shape: Shape, arrays) -> Callable[[], object]:
    support, labels, queries = arrays
    names = [f"class-{k}" for k in labels]
    if shape.task:
        task = client.create_task(support, names, version=version, ttl_seconds=3600)
        return lambda: client.classify_task(task.task_id, queries)
    return lambda: client.classify(support, names, queries, version=version)


def record(cells: list[Cell], cell: Cell) -> None:
    cells.append(cell)
    print(f"{cell.system:12s} {cell.shape:45s} c={cell.concurrency:<3d} p50 {cell.p50_ms:7.2f} ms  "
          f"{cell.throughput:8.1f} req/s", flush=True)


def pooled(loops: list[Loop]) -> Loop:
    """Several windows of one closed loop as one: their latencies and answers over their summed time."""
    return Loop([latency for loop in loops for latency in loop.latencies], sum(loop.completed for loop in loops),
                sum(loop.seconds for loop in loops), sum(loop.elapsed for loop in loops))


def race_triton(peer: TritonPeer, server: ServerProcess, model, shape: Shape, concurrency: tuple[int, ...],
                seconds: float, warmup: float, cells: list[Cell]) -> None:
    """metalearn's v2 endpoint and the Triton peer on one episode, the same tritonclient load: each cell's time
    in :data:`RACE_ROUNDS` windows taken in turn (the order alternating), so a shared host's slow spells fall on
    both.  The limit runs in the same windows (**limit-race**): no server answering over gRPC comes in under it,
    so its ratio to the peer is the floor of metalearn's."""
    arrays = episode_arrays(shape)
    limit = limit_call(model, shape, arrays)
    with tempfile.TemporaryDirectory() as folder:
        episode = save_episode(arrays, Path(folder) / "episode.npz")
        systems: dict[str, Callable[[int, float], Loop]] = {  # (concurrency, window seconds) → one window
            "limit-race": lambda c, window: closed_loop(limit, c, window, warmup),
            "metalearn-v2": lambda c, window: tritonclient_load(server.target, model.name, episode, c, window, warmup),
            "triton": lambda c, window: tritonclient_load(peer.target, model.name, episode, c, window, warmup),
        }
        for c in concurrency:
            if c > PEER_MAX_CONCURRENCY:
                continue
            loops: dict[str, list[Loop]] = {system: [] for system in systems}
            for round_ in range(RACE_ROUNDS):
                for system in (reversed(systems) if round_ % 2 else systems):
                    loops[system].append(systems[system](c, seconds / RACE_ROUNDS))
            for system, windows in loops.items():
                record(cells, summarise(system, shape, c, pooled(windows)))


def run(seconds: float, warmup: float, shapes: tuple[Shape, ...], concurrency: tuple[int, ...],
        soak_requests: int, server_args: list[str], version: str = "", triton_peer: bool = True) -> dict:
    from metalearn_client import Client
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    model = ModelRepository(BUNDLED_REPOSITORY, resolve_providers(["CPUExecutionProvider"])).get("", version)
    server = ServerProcess(server_args)
    cells: list[Cell] = []
    peer = None
    if triton_peer and not PEER_PYTHON.exists():
        print(f"note: {PEER_PYTHON} is missing (make dev installs PyTriton there); the Triton peer is left out")
    elif triton_peer:
        peer = TritonPeer(model.directory, model.name, model.config.default_distance)
    try:
        with Client(server.target, timeout=60.0) as client:
            for shape in shapes:
                arrays = episode_arrays(shape)
                systems = {"limit": limit_call(model, shape, arrays),
                           "metalearn": metalearn_call(client, model.version, shape, arrays)}
                if not shape.task:
                    systems["peer"] = peer_call(model, shape, arrays)
                for name, call in systems.items():
                    for c in concurrency:
                        if name == "peer" and c > PEER_MAX_CONCURRENCY:
                            continue
                        cpu_before = server.cpu_seconds()
                        loop = closed_loop(call, c, seconds, warmup)
                        cell = summarise(name, shape, c, loop)
                        if name == "metalearn":
                            cell.server_cpu = (server.cpu_seconds() - cpu_before) / loop.elapsed
                            cell.server_rss_mb = server.rss_mb()
                        record(cells, cell)
                if peer is not None and not shape.task:
                    race_triton(peer, server, model, shape, concurrency, seconds, warmup, cells)
            queries = episode_arrays(SHAPES[3])[2]
            embed_alone = {
                "limit": summarise("limit", SHAPES[3], 1, closed_loop(lambda: model.embed(queries), 1, seconds, warmup)),
                "metalearn": summarise("metalearn", SHAPES[3], 1,
                                       closed_loop(lambda: client.embed(queries, version=model.version), 1, seconds,
                                                   warmup)),
            }
            soak = memory_soak(client, model.version, server, soak_requests)
    finally:
        server.stop()
        if peer is not None:
            peer.stop()
    return {"model": f"{model.name} version {model.version}", "cells": [asdict(c) for c in cells], "embed_alone": {k: asdict(v) for k, v in embed_alone.items()},
            "soak": soak, "ratios": ratios(cells, embed_alone, soak), "machine": machine(),
            "settings": {"seconds": seconds, "warmup": warmup, "server_args": server_args}}


def fixed_count(call: Callable[[int], object], concurrency: int, total: int) -> float:
    """Send exactly ``total`` requests from ``concurrency`` threads; return the seconds taken."""
    remaining = iter(range(total))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                n = next(remaining, None)
            if n is None:
                return
            call(n)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def memory_soak(client, version: str, server: ServerProcess, requests: int) -> dict:
    """Server RSS after a warm-up and after ``requests`` more (Classify and ClassifyTask, 16 clients)."""
    support, labels, queries = episode_arrays(SHAPES[2])
    names = [f"class-{k}" for k in labels]
    task = client.create_task(support, names, version=version, ttl_seconds=3600)
    calls = (lambda: client.classify(support, names, queries, version=version),
             lambda: client.classify_task(task.task_id, queries))
    fixed_count(lambda n: calls[n % 2](), 16, min(5_000, requests))
    after_warmup = server.rss_mb()
    seconds = fixed_count(lambda n: calls[n % 2](), 16, requests)
    return {"requests": requests, "rss_after_warmup_mb": after_warmup, "rss_after_mb": server.rss_mb(),
            "seconds": seconds}


def cell(cells: list[Cell], system: str, shape: Shape, concurrency: int) -> Cell:
    return next(c for c in cells if (c.system, c.shape, c.concurrency) == (system, shape.name, concurrency))


def ratios(cells: list[Cell], embed_alone: dict[str, Cell], soak: dict) -> dict:
    target = SHAPES[3]
    limit_best = max(c.throughput for c in cells if c.system == "limit" and c.shape == target.name)
    task = SHAPES[5]
    return {
        "e2e_p50_over_limit_c1": cell(cells, "metalearn", target, 1).p50_ms / cell(cells, "limit", target, 1).p50_ms,
        "e2e_throughput_c16_over_limit_best": cell(cells, "metalearn", target, 16).throughput / limit_best,
        "peer_p50_over_metalearn_c1": cell(cells, "peer", target, 1).p50_ms / cell(cells, "metalearn", target, 1).p50_ms,
        "classify_task_over_embed_alone_grpc": cell(cells, "metalearn", task, 1).p50_ms / embed_alone["metalearn"].p50_ms,
        "classify_task_over_embed_alone_in_process": (cell(cells, "metalearn", task, 1).p50_ms
                                                      / embed_alone["limit"].p50_ms),
        "rss_growth_after_soak": soak["rss_after_mb"] / soak["rss_after_warmup_mb"] - 1,
        **triton_ratios(cells, target),
    }


def triton_ratios(cells: list[Cell], target: Shape) -> dict:
    """metalearn's v2 endpoint against the Triton peer, where the peer ran."""
    if not any(c.system == "triton" for c in cells):
        return {}
    return {
        "metalearn_v2_p50_over_triton_c1": (cell(cells, "metalearn-v2", target, 1).p50_ms
                                            / cell(cells, "triton", target, 1).p50_ms),
        "metalearn_v2_throughput_c16_over_triton": (cell(cells, "metalearn-v2", target, 16).throughput
                                                    / cell(cells, "triton", target, 16).throughput),
        "limit_p50_over_triton_c1": (cell(cells, "limit-race", target, 1).p50_ms
                                     / cell(cells, "triton", target, 1).p50_ms),
    }


TARGETS = {
    "e2e_p50_over_limit_c1": ("end-to-end p50 / limit p50, concurrency 1, 5-way 5-shot 75 queries", "≤ 1.25"),
    "e2e_throughput_c16_over_limit_best": ("end-to-end throughput at concurrency 16 / limit's best throughput",
                                           "≥ 0.8"),
    "peer_p50_over_metalearn_c1": ("eager PyTorch p50 / metalearn p50, concurrency 1, same episode", "≥ 4"),
    "classify_task_over_embed_alone_grpc": ("ClassifyTask p50 / Embed of the same queries p50, both over gRPC",
                                            "≤ 1.1"),
    "classify_task_over_embed_alone_in_process": ("ClassifyTask p50 / in-process embedding of the queries p50",
                                                  "(shown)"),
    "rss_growth_after_soak": ("server RSS growth over the soak requests after warm-up", "≤ 10%"),
    "metalearn_v2_p50_over_triton_c1": ("metalearn p50 / Triton peer p50, both KServe v2 with tritonclient, "
                                        "concurrency 1, same episode", "≤ 0.9"),
    "metalearn_v2_throughput_c16_over_triton": ("metalearn throughput / Triton peer throughput, concurrency 16",
                                                "≥ 1"),
    "limit_p50_over_triton_c1": ("limit p50 / Triton peer p50, concurrency 1, in the race's windows: the floor "
                                 "of the first Triton ratio", "(shown)"),
}


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Model: {result['model']}. Machine: {m['cpu']}, {m['cores']} cores; onnxruntime {m['onnxruntime']}, torch {m['torch']}, "
             f"Python {m['python']}. {result['settings']['seconds']} s per cell after "
             f"{result['settings']['warmup']} s warm-up; closed-loop clients.", "",
             "| ratio | target | measured |", "| --- | --- | --- |"]
    for key, value in result["ratios"].items():
        what, target = TARGETS[key]
        shown = f"{100 * value:+.1f}%" if key == "rss_growth_after_soak" else f"{value:.2f}×"
        lines.append(f"| {what} | {target} | {shown} |")
    soak = result["soak"]
    lines += ["", f"Soak: {soak['requests']:,} requests in {soak['seconds']:.0f} s; server RSS "
                  f"{soak['rss_after_warmup_mb']:.0f} MB after warm-up, {soak['rss_after_mb']:.0f} MB after.", "",
              "| shape | system | concurrency | p50 ms | p95 ms | p99 ms | req/s | server CPU | server RSS MB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in result["cells"]:
        cpu = f"{c['server_cpu']:.2f}" if c["server_cpu"] is not None else ""
        rss = f"{c['server_rss_mb']:.0f}" if c["server_rss_mb"] is not None else ""
        lines.append(f"| {c['shape']} | {c['system']} | {c['concurrency']} | {c['p50_ms']:.2f} | {c['p95_ms']:.2f} | "
                     f"{c['p99_ms']:.2f} | {c['throughput']:.0f} | {cpu} | {rss} |")
    return "\n".join(lines) + "\n"


def write_report(out: Path, name: str, result: dict, markdown: Callable[[dict], str]) -> None:
    """``<out>/<name>.json`` and ``.md``, and the markdown on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per cell")
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="one shape, concurrency 1 and 16, short soak")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--name", default="cpu")
    parser.add_argument("--server-arg", action="append", default=[], help="extra metalearn-server flag (repeatable)")
    parser.add_argument("--version", default="", help="version of the bundled model to measure (default: latest)")
    parser.add_argument("--no-triton-peer", dest="triton_peer", action="store_false",
                        help="leave out the Triton peer (it takes tens of seconds to start)")
    args = parser.parse_args(argv)
    shapes, concurrency = (SHAPES[3], SHAPES[5]), (1, 16)
    if not args.quick:
        shapes, concurrency = SHAPES, CONCURRENCY
    result = run(args.seconds, args.warmup, shapes, concurrency,
                 min(args.soak_requests, 2_000) if args.quick else args.soak_requests, args.server_arg, args.version,
                 args.triton_peer)
    write_report(args.out, args.name, result, markdown)


if __name__ == "__main__":
    main()
