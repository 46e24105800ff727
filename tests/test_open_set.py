"""The default rejection threshold keeps its promise whatever the episode's shape.

A prototype of 10 drawings sits nearer its class's centre than one drawing does,
so a known-score of the raw distance rejects many more legitimate 1-shot queries
than 10-shot ones; the served score allows for the shot count.
"""
from __future__ import annotations

import numpy as np
import pytest

from helpers import as_tensor, labels_of
from metalearn.calibration import KNOWN_ACCEPTANCE, fit_open_set
from metalearn.episodes import EpisodeSampler
from metalearn_server.execution.open_set import OpenSetCalibration

WAYS, SIZE, DRAWERS = 20, 64, 30


def synthetic_classes(rng: np.random.Generator, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings ``[classes, DRAWERS, SIZE]``: each class a Gaussian cloud about its own centre, clouds of
    somewhat different widths, in 5 'alphabets'; and each class's alphabet."""
    centres = rng.normal(0, 1, (classes, 1, SIZE))
    widths = rng.uniform(0.25, 0.35, (classes, 1, 1))
    return (centres + widths * rng.normal(0, 1, (classes, DRAWERS, SIZE))).astype(np.float32), \
        np.arange(classes) % 5


def known_rejected(calibration: OpenSetCalibration, embeddings: np.ndarray, shots: int, seed: int) -> float:
    """Share of one WAYS-way episode's known queries whose known-score is below the default threshold."""
    classes = embeddings.shape[0]
    index = np.arange(classes * DRAWERS).reshape(classes, DRAWERS)
    from metalearn.data import FewShotImages

    episode = EpisodeSampler(FewShotImages(index, np.zeros(classes)), WAYS, shots, DRAWERS - shots,
                             seed=seed).sample()
    flat = embeddings.reshape(classes * DRAWERS, SIZE)
    onehot = np.eye(WAYS)[episode.support_labels]
    prototypes = onehot.T @ flat[episode.support] / onehot.sum(0)[:, None]
    distances = ((flat[episode.query][:, None] - prototypes[None]) ** 2).sum(-1)
    known = calibration.known_score(distances.min(1), onehot.sum(0)[distances.argmin(1)])
    return float((known < calibration.threshold).mean())


def test_a_1_shot_and_a_10_shot_episode_keep_99_percent_of_known_queries():
    rng = np.random.default_rng(0)
    validation, alphabets = synthetic_classes(rng, 100)
    calibration = OpenSetCalibration(**fit_open_set(validation, alphabets, cosine=False))
    assert calibration.shot_scale > 0.5  # independent noise: the distance to a mean of n grows by 1 + 1/n
    test, _ = synthetic_classes(rng, 60)  # other classes drawn alike
    for shots in (1, 10):  # 20 ways × 29 or 20 queries
        assert known_rejected(calibration, test, shots, seed=shots) <= 1 - KNOWN_ACCEPTANCE
    # The same logistic blind to the shots rejects far more 1-shot queries: the test can tell them apart.
    blind = OpenSetCalibration(calibration.midpoint, calibration.width, calibration.threshold, 0.0)
    assert known_rejected(blind, test, 1, seed=1) > 5 * (1 - KNOWN_ACCEPTANCE)


def test_outsiders_of_no_class_calibrate_a_text_models_score():
    """A text split's outsiders are requests of no intent (CLINC's ``oos_val``), not further classes."""
    rng = np.random.default_rng(1)
    validation, domains = synthetic_classes(rng, 30)  # as many classes as CLINC's two validation domains
    outsiders = synthetic_classes(rng, 100)[0][:, 0]  # one item each from 100 clouds that are no class
    calibration = OpenSetCalibration(**fit_open_set(validation, domains, cosine=False, outsiders=outsiders))
    assert calibration.shot_scale > 0.5
    test, _ = synthetic_classes(rng, 60)
    for shots in (1, 10):
        assert known_rejected(calibration, test, shots, seed=shots) <= 1 - KNOWN_ACCEPTANCE
    # Items from no class at all score below the threshold: the logistic learnt the outsiders' distances.
    strangers = synthetic_classes(rng, 20)[0][:, 0]
    distance = ((strangers[:, None] - test[:WAYS, :1]) ** 2).sum(-1).min(1)
    assert (calibration.known_score(distance, np.ones(len(distance))) < calibration.threshold).mean() > 0.9


@pytest.mark.parametrize("shots", [1, 10])
def test_served_defaults_keep_known_queries_at_1_and_10_shots(client, evaluation_data, shots):
    """The bundled default model, through a server, on a 20-way episode from held-out alphabets."""
    queries = 20 - shots if shots > 5 else 15
    episode = EpisodeSampler(evaluation_data, WAYS, shots, queries, seed=21).sample()
    answer = client.classify(as_tensor(episode.support), labels_of(episode, episode.support_labels),
                             as_tensor(episode.query))
    rejected = np.mean([p.unknown for p in answer.predictions])
    # 300 (1-shot) or 200 (10-shot) known queries; the shot-blind score rejected 4% at 1 shot.
    assert rejected <= 0.02


def test_configs_without_a_shot_scale_keep_serving_and_a_negative_one_is_refused():
    import json

    from metalearn_server.execution.model_config import ConfigError, ModelConfig
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY

    raw = json.loads((BUNDLED_REPOSITORY / "omniglot-conv4" / "5" / "config.json").read_text())
    assert ModelConfig.from_dict(raw).open_set["euclidean"].shot_scale > 0
    del raw["open_set"]["euclidean"]["shot_scale"]  # as exported before the score allowed for shots
    calibration = ModelConfig.from_dict(raw).open_set["euclidean"]
    assert calibration.shot_scale == 0
    assert calibration.known_score(np.array([calibration.midpoint] * 2), np.array([1, 10])).tolist() == [0.5, 0.5]
    raw["open_set"]["cosine"]["shot_scale"] = -0.5
    with pytest.raises(ConfigError, match="open_set.cosine: .*shot_scale >= 0"):
        ModelConfig.from_dict(raw)
