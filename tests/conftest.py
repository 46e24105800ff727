"""Fixtures shared by the tests; the helpers they use are in helpers.py."""
from __future__ import annotations

from typing import Iterator

import pytest

from helpers import RunningServer, start_server, stop_server
from metalearn.data import load_split
from metalearn.episodes import Episode, EpisodeSampler
from metalearn_client import Client


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(tmp_path_factory.mktemp("server"))
    yield running
    stop_server(running)


@pytest.fixture()
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout=30.0) as connection:
        yield connection


@pytest.fixture(scope="session")
def evaluation_data():
    return load_split("evaluation")


@pytest.fixture()
def episode(evaluation_data) -> Episode:
    """A 5-way 5-shot episode from held-out alphabets, 3 queries per class."""
    return EpisodeSampler(evaluation_data, ways=5, shots=5, queries=3, seed=7).sample()
