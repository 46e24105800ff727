"""Helpers for the tests: a real server process on free loopback ports, and Omniglot images.

Every test that talks to the server goes over real gRPC to a
``metalearn-server`` started here, exactly as a user would start it.
"""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import numpy as np
import pytest
from PIL import Image

from metalearn.data import load_split, to_model_input
from metalearn.episodes import Episode, EpisodeSampler
from metalearn_client import Client, MetalearnError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text()


def start_server(tmp_path: Path, *extra: str, env: dict[str, str] | None = None, port: int = 0,
                 probe: Callable[[str], Client] | None = None) -> RunningServer:
    """Start a server and wait until its health check says SERVING (``probe`` builds the checking client)."""
    port, metrics_port = port or free_port(), free_port()
    log_path = tmp_path / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "metalearn_server", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(metrics_port), *extra],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    server = RunningServer(process, port, metrics_port, log_path)
    deadline = time.monotonic() + 60
    with (probe or (lambda target: Client(target, timeout=1.0)))(server.target) as client:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{server.log()}")
            try:
                if client.health() == "SERVING":
                    return server
            except MetalearnError:
                pass
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server did not become healthy in 60 s:\n{server.log()}")
            time.sleep(0.1)


def stop_server(server: RunningServer) -> int:
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=30)


def as_tensor(images: np.ndarray) -> np.ndarray:
    """uint8 strokes-on-black images to the model's float32 input."""
    return to_model_input(images)


def as_png(image: np.ndarray, size: int = 105) -> bytes:
    """A character as a user would photograph it: dark strokes on white, larger than 28 px."""
    picture = Image.fromarray(255 - image).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def labels_of(episode: Episode, indices: np.ndarray) -> list[str]:
    return [f"char-{int(episode.classes[i])}" for i in indices]


def eventually(check: Callable[[], object], seconds: float = 20.0) -> object:
    """Retry ``check`` until it returns something true (or stops raising) within ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
            if result:
                return result
        except (AssertionError, MetalearnError):
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def status_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The gRPC status ``call`` ends with: OK, the code of the error it raised, or CANCELLED for a future
    this side cancelled."""
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()
    except grpc.FutureCancelledError:
        return grpc.StatusCode.CANCELLED
