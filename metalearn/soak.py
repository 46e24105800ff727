"""Soak test: mixed RPCs at concurrency 32 for several minutes against a real server on loopback, quiet
first, then under hostile traffic.

    python -m metalearn.soak --minutes 5        # `make soak`

Every RPC of the API is in the mix (Classify with tensors and with PNG files,
CreateTask/ClassifyTask/DeleteTask, StreamClassifyTask, Embed, ListModels,
GetModel) plus malformed requests that must come back INVALID_ARGUMENT, sent
by four callers (bearer tokens) of eight clients each, as several backends
would.  The second half of the run adds hostile traffic beside that mix:

* a caller flooding the server with the largest requests the default limits
  allow (2,048 support and 4,096 query tensors, 19 MB), back to back;
* a caller sending such requests and walking away from each (cancelling it
  after 0.1 to 1 s); it and the flood run in a process of their own, each
  with a token of its own, as callers on other machines would;
* broken model versions appearing in the repository the server watches and
  going again (a config whose input shape is not the backbone's, heads
  swapped, a wrong embedding size), which must be refused, never served.

Each window reports throughput, the latency percentiles of the mix, the
server's RSS and any unexpected outcome.  The run passes when no outcome was
unexpected (the mix always succeeds; floods may be refused at capacity,
walked-away calls are cancelled), the server's RSS stayed within
:data:`RSS_BUDGET_MB` in every window, grew by at most 10% over the quiet phase
and came back within :data:`RETURN_SLACK_MB` of it once the hostile traffic
stopped, and the mix's p99 under hostile traffic stayed within 2× of the quiet p99 (the
first window is a warm-up when a phase has three or more).  The report goes
to ``docs/benchmarks/soak.md``.
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from metalearn.benchmark import SHAPES, ServerProcess, closed_loop, episode_arrays, machine

#: The server's resident memory may never pass this (deploy/kubernetes gives the pod 2 GiB).
RSS_BUDGET_MB = 2048
#: Once the hostile traffic stops and the server idles, its RSS must come back within this of the quiet phase's
#: (the backbone's arena sized for a full chunk, and what the allocator keeps): memory that does not come back
#: is a leak, not load.
RETURN_SLACK_MB = 256
#: Seconds the server idles after the hostile phase before its RSS is read (it trims at its repository polls).
IDLE_SECONDS = 5.0
CALLERS, CLIENTS_PER_CALLER = 4, 8
#: Broken versions the deployer drops in, as edits of a good version's config.json.
BROKEN_CONFIGS: dict[str, Callable[[dict], None]] = {
    "input shape not the backbone's": lambda c: (c["input"].update(shape=[1, 32, 32]),
                                                 c["preprocessing"].update(width=32, height=32)),
    "heads swapped": lambda c: c["heads"].update(prototype=c["heads"]["linear"], linear=c["heads"]["prototype"]),
    "wrong embedding size": lambda c: c.update(embedding_size=c["embedding_size"] + 1),
}


@dataclass
class Window:
    seconds: float
    requests: int
    p50_ms: float
    p99_ms: float
    rss_mb: float
    unexpected: int
    hostile: bool = False


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


CLASSIFY = "/metalearn.v1.FewShotService/Classify"


def maximal_request() -> bytes:
    """The largest Classify the default limits allow (2,048 support and 4,096 query tensors, 19 MB), serialized."""
    from metalearn.v1 import fewshot_pb2, tensor_pb2

    rng = np.random.default_rng(0)

    def items(count: int) -> tensor_pb2.Items:
        data = rng.standard_normal((count, 1, 28, 28)).astype(np.float32)
        return tensor_pb2.Items(tensor=tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=data.shape,
                                                         data=data.tobytes()))

    return fewshot_pb2.ClassifyRequest(
        support=fewshot_pb2.SupportSet(items=items(2048), labels=[f"c{i % 512}" for i in range(2048)]),
        queries=items(4096)).SerializeToString()


def hostile_callers(target: str, stop, outcomes) -> None:
    """The flooding and the walking-away caller, in a process of their own, as they would be on machines of
    their own: what their clients spend (CPU, the GIL) is not charged to the mix's clients.  They send the
    request's bytes as made once and take answers unparsed, as a cheap attacker would; each outcome goes
    to ``outcomes`` (a queue), None last."""
    import grpc

    request = maximal_request()

    def classify(channel: grpc.Channel) -> grpc.UnaryUnaryMultiCallable:
        return channel.unary_unary(CLASSIFY)  # no (de)serializers: bytes in, bytes out

    def flood() -> None:
        with _channel(target) as channel:
            call = classify(channel)
            while not stop.is_set():
                try:
                    call(request, timeout=300, metadata=(("authorization", "Bearer soak-flooding-caller"),))
                    outcomes.put("flood OK")
                except grpc.RpcError as error:
                    outcomes.put(f"flood {error.code().name}")
                    stop.wait(0.2)

    def walk_away() -> None:
        rng = random.Random(1)
        with _channel(target) as channel:
            call = classify(channel)
            while not stop.is_set():
                pending = call.future(request, timeout=300,
                                      metadata=(("authorization", "Bearer soak-walking-away-caller"),))
                stop.wait(rng.uniform(0.1, 1.0))
                pending.cancel()
                try:
                    pending.result()
                    outcomes.put("walked away OK")
                except grpc.FutureCancelledError:
                    outcomes.put("walked away CANCELLED")
                except grpc.RpcError as error:
                    outcomes.put(f"walked away {error.code().name}")

    threads = [threading.Thread(target=run) for run in (flood, walk_away)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    outcomes.put(None)


def _channel(target: str):
    import grpc

    return grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 64 << 20),
                                                  ("grpc.max_receive_message_length", 64 << 20)])


class Hostile:
    """The hostile traffic of the second phase: the flooding and walking-away callers in a process of their own
    (:func:`hostile_callers`), broken deploys in a thread; outcomes it did not expect are counted."""

    EXPECTED = {"flood OK", "flood RESOURCE_EXHAUSTED", "walked away OK", "walked away CANCELLED",
                "walked away RESOURCE_EXHAUSTED", "broken version deployed"}

    def __init__(self, target: str, repository: Path, model: str, unexpected: Counter, lock: threading.Lock) -> None:
        self.target, self.repository, self.model, self.unexpected, self.lock = target, repository, model, unexpected, lock
        self.stop = threading.Event()
        self.outcomes: Counter = Counter()
        spawn = multiprocessing.get_context("spawn")  # gRPC must not be forked
        self._stop_callers, self._queue = spawn.Event(), spawn.Queue()
        self._callers = spawn.Process(target=hostile_callers, args=(target, self._stop_callers, self._queue),
                                      daemon=True)
        self._threads = [threading.Thread(target=run, daemon=True) for run in (self._collect, self._deploy)]

    @property
    def started(self) -> bool:
        return self._callers.pid is not None

    def start(self) -> None:
        self._callers.start()
        for thread in self._threads:
            thread.start()

    def close(self) -> None:
        self.stop.set()
        if self._callers.pid is not None:
            self._stop_callers.set()
            self._callers.join(timeout=120)
            if self._callers.is_alive():
                self._callers.kill()
                self._queue.put(None)
        for thread in self._threads:
            if thread.ident is not None:
                thread.join(timeout=120)

    def _count(self, outcome: str) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if outcome not in self.EXPECTED:
                self.unexpected[f"hostile {outcome}"] += 1

    def _collect(self) -> None:
        while (outcome := self._queue.get()) is not None:
            self._count(outcome)

    def _deploy(self) -> None:
        """Broken versions appear (written elsewhere, moved in) and are removed again, one every few seconds."""
        model_dir = self.repository / self.model  # the default image model: the broken configs edit its preprocessing
        good = max((p for p in model_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        number = 1000
        while not self.stop.is_set():
            for change in BROKEN_CONFIGS.values():
                staging = self.repository.parent / f"staging-{number}"
                shutil.copytree(good, staging)
                config = json.loads((staging / "config.json").read_text())
                change(config)
                (staging / "config.json").write_text(json.dumps(config))
                staging.rename(model_dir / str(number))
                self.stop.wait(3.0)
                shutil.rmtree(model_dir / str(number))
                self._count("broken version deployed")
                number += 1
                if self.stop.is_set():
                    return


def soak(minutes: float, concurrency: int, window_seconds: float) -> tuple[list[Window], Counter, Counter, float]:
    """The windows, the unexpected outcomes, the hostile traffic's outcomes and the idle RSS (MB) after it."""
    from metalearn_client import Client, MetalearnError
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY

    scratch = Path(tempfile.mkdtemp(prefix="metalearn-soak-"))
    repository = scratch / "models"
    shutil.copytree(BUNDLED_REPOSITORY, repository)
    server = ServerProcess(["--model-repository", str(repository), "--poll-seconds", "1"])
    unexpected: Counter = Counter()
    windows: list[Window] = []
    lock = threading.Lock()
    # Each caller has a bearer token of its own, as separate backends would: the server's fair share tells
    # callers apart by token (channels to one target from one process share one connection, and so one peer).
    clients = [Client(server.target, timeout=60, token=f"soak-mix-caller-{i}") for i in range(CALLERS)]
    hostile = Hostile(server.target, repository, clients[0].get_model().name, unexpected, lock)
    try:
        mixes = [operations(client) for client in clients]
        served, turns = threading.local(), itertools.count()

        def one() -> None:
            if not hasattr(served, "mix"):  # each thread keeps to one caller's connection, callers in turn
                served.mix = mixes[next(turns) % CALLERS]
            weights, calls = zip(*served.mix)
            call = random.choices(calls, weights)[0]
            try:
                call()
            except (MetalearnError, AssertionError) as error:
                with lock:
                    unexpected[str(getattr(error, "code", type(error).__name__))] += 1

        end = time.monotonic() + 60 * minutes
        halfway = time.monotonic() + 30 * minutes
        while time.monotonic() < end:
            is_hostile = time.monotonic() >= halfway
            if is_hostile and not hostile.started:
                hostile.start()
            before = sum(unexpected.values())
            loop = closed_loop(one, concurrency, window_seconds, warmup=0)
            ordered = sorted(loop.latencies)
            windows.append(Window(loop.seconds, loop.completed, 1000 * statistics.median(ordered),
                                  1000 * ordered[int(0.99 * (len(ordered) - 1))], server.rss_mb(),
                                  sum(unexpected.values()) - before, is_hostile))
            w = windows[-1]
            print(f"window {len(windows)}{' (hostile)' if w.hostile else ''}: {w.requests / w.seconds:.0f} req/s, "
                  f"p50 {w.p50_ms:.1f} ms, p99 {w.p99_ms:.1f} ms, RSS {w.rss_mb:.0f} MB, unexpected {w.unexpected}",
                  flush=True)
        hostile.close()
        time.sleep(IDLE_SECONDS)
        idle_mb = server.rss_mb()
    finally:
        hostile.close()
        for client in clients:
            client.close()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return windows, unexpected, hostile.outcomes, idle_mb


def _settled(phase: list[Window]) -> list[Window]:
    """A phase's windows after its warm-up window, when it has three or more."""
    return phase[1:] if len(phase) >= 3 else phase


def verdict(windows: list[Window], unexpected: Counter, idle_mb: float | None = None) -> list[str]:
    """What failed, if anything (see the module's docstring); ``idle_mb`` is the RSS once the hostile traffic
    has stopped."""
    failures = []
    if unexpected:
        failures.append(f"unexpected outcomes: {dict(unexpected)}")
    over = [w.rss_mb for w in windows if w.rss_mb > RSS_BUDGET_MB]
    if over:
        failures.append(f"RSS reached {max(over):.0f} MB, over the {RSS_BUDGET_MB} MB budget")
    quiet, hostile = [w for w in windows if not w.hostile], [w for w in windows if w.hostile]
    calm = _settled(quiet)
    if calm and calm[-1].rss_mb > 1.10 * calm[0].rss_mb:
        failures.append(f"RSS grew from {calm[0].rss_mb:.0f} to {calm[-1].rss_mb:.0f} MB in the quiet phase")
    if calm and hostile and idle_mb is not None and idle_mb > calm[-1].rss_mb + RETURN_SLACK_MB:
        failures.append(f"after the hostile traffic RSS stayed at {idle_mb:.0f} MB, over the quiet "
                        f"{calm[-1].rss_mb:.0f} MB + {RETURN_SLACK_MB} MB")
    if calm and calm[-1].p99_ms > 2 * calm[0].p99_ms:
        failures.append(f"p99 drifted from {calm[0].p99_ms:.1f} to {calm[-1].p99_ms:.1f} ms in the quiet phase")
    if calm and hostile:
        quiet_p99 = max(w.p99_ms for w in calm)
        worst = max(hostile, key=lambda w: w.p99_ms)
        if worst.p99_ms > 2 * quiet_p99:
            failures.append(f"under hostile traffic the mix's p99 reached {worst.p99_ms:.1f} ms, over 2× the quiet "
                            f"{quiet_p99:.1f} ms")
    return failures


def report(windows: list[Window], unexpected: Counter, hostile: Counter, idle_mb: float, concurrency: int) -> str:
    m = machine()
    total = sum(w.requests for w in windows)
    failures = verdict(windows, unexpected, idle_mb)
    lines = [f"Soak: {total:,} operations (each one to three RPCs) at concurrency {concurrency} from {CALLERS} callers "
             f"over {sum(w.seconds for w in windows) / 60:.1f} minutes on {m['cpu']}, {m['cores']} cores, hostile "
             f"traffic in the second half. Verdict: {'PASS' if not failures else 'FAIL: ' + '; '.join(failures)}.", "",
             "| window | phase | operations/s | p50 ms | p99 ms | server RSS MB | unexpected |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {i} | {'hostile' if w.hostile else 'quiet'} | {w.requests / w.seconds:.0f} | {w.p50_ms:.1f} | "
              f"{w.p99_ms:.1f} | {w.rss_mb:.0f} | {w.unexpected} |" for i, w in enumerate(windows, 1)]
    lines += ["", "Hostile traffic: " + (", ".join(f"{n} {what}" for what, n in sorted(hostile.items())) or "none") + "."
              + f" Server RSS {IDLE_SECONDS:.0f} s after it stopped: {idle_mb:.0f} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=CALLERS * CLIENTS_PER_CALLER)
    parser.add_argument("--window-seconds", type=float, default=30.0)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/soak.md"))
    args = parser.parse_args(argv)
    windows, unexpected, hostile, idle_mb = soak(args.minutes, args.concurrency, args.window_seconds)
    text = report(windows, unexpected, hostile, idle_mb, args.concurrency)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    if verdict(windows, unexpected, idle_mb):
        sys.exit(1)


if __name__ == "__main__":
    main()
