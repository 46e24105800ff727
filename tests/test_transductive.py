"""The transductive method: soft k-means refinement of the prototypes with the request's own queries."""
from __future__ import annotations

import json

import numpy as np
import pytest

from helpers import as_tensor, labels_of
from metalearn_server.execution.model_config import DEFAULT_REFINEMENT_STEPS, ConfigError, ModelConfig
from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository


@pytest.fixture(scope="module")
def model():
    return ModelRepository(BUNDLED_REPOSITORY, ["CPUExecutionProvider"]).get("", "2")  # one 576-d pass: small


def clustered(model, rng: np.random.Generator, shots: int, queries: int):
    """Three classes whose items lie at about the calibration's midpoint distance from their class
    mean, so the known-scores κ spread over (0, 1) and weigh the queries unequally."""
    calibration = model.config.open_set["euclidean"]
    size, midpoint = model.config.embedding_size, calibration.midpoint * (1 + calibration.shot_scale / shots)
    centres = rng.normal(0, 1, (3, size)).astype(np.float32) * 2
    noise = np.sqrt(midpoint / size)  # a query's squared distance to its mean: ≈ (0.93² + 0.5² / shots) · midpoint
    support = np.repeat(centres, shots, 0) + rng.normal(0, noise * 0.5, (3 * shots, size)).astype(np.float32)
    query = np.repeat(centres, queries, 0) + rng.normal(0, noise * 0.93, (3 * queries, size)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[np.repeat(np.arange(3), shots)]
    return support, onehot, query


def reference(model, support, onehot, queries, rounds):
    """Ren et al. 2018's soft k-means step, each query weighted by its known-score, in plain numpy."""
    temperature, calibration = model.config.temperature["euclidean"], model.config.open_set["euclidean"]
    support, onehot, queries = (a.astype(np.float64) for a in (support, onehot, queries))

    def distances(centres):
        return ((queries[:, None, :] - centres[None]) ** 2).sum(-1)

    def softmax(logits):
        e = np.exp(logits - logits.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    centres = onehot.T @ support / onehot.sum(0)[:, None]
    nearest_shots = onehot.sum(0)[distances(centres).argmin(1)]
    normalised = distances(centres).min(1) / (1 + calibration.shot_scale / nearest_shots)
    known = 1 / (1 + np.exp((normalised - calibration.midpoint) / calibration.width))
    for _ in range(rounds):
        weights = known[:, None] * softmax(-distances(centres) / temperature)
        centres = (onehot.T @ support + weights.T @ queries) / (onehot.sum(0) + weights.sum(0))[:, None]
    return centres, known


@pytest.mark.parametrize("rounds", [1, 3])
def test_refinement_is_known_weighted_soft_k_means(model, rounds):
    support, onehot, queries = clustered(model, np.random.default_rng(0), shots=2, queries=4)
    prototype = model.build_head(support, onehot, "euclidean", None)
    refined = model.refine_head(prototype, support, onehot, queries, rounds)
    centres, known = reference(model, support, onehot, queries, rounds)
    assert 0.05 < known.min() < known.max() < 0.95  # the weights matter in this problem
    # float32 distances between ~2,000-norm embeddings: agreement to ~1e-4 of the values.
    np.testing.assert_allclose(refined.weight, 2 * centres, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(refined.bias, -(centres ** 2).sum(1), rtol=1e-4)
    assert not np.allclose(refined.weight, prototype.weight, atol=1e-2)  # the queries moved the means
    # The open-set score stays measured against the support set's own prototypes.
    assert refined.prototype_weight is prototype.weight and refined.adapted


def test_zero_rounds_is_the_prototype_head(model):
    support, onehot, queries = clustered(model, np.random.default_rng(1), shots=2, queries=2)
    prototype = model.build_head(support, onehot, "euclidean", None)
    same = model.refine_head(prototype, support, onehot, queries, 0)
    assert same.weight is prototype.weight and not same.adapted


def test_a_query_unlike_every_class_does_not_move_the_means(model):
    """Its known-score is about 0, so it joins no class: a distractor cannot drag a prototype away."""
    support, onehot, queries = clustered(model, np.random.default_rng(2), shots=1, queries=3)
    far = queries[:1] + 50.0
    prototype = model.build_head(support, onehot, "euclidean", None)
    without = model.refine_head(prototype, support, onehot, queries, 3)
    with_far = model.refine_head(prototype, support, onehot, np.concatenate([queries, far]), 3)
    np.testing.assert_allclose(with_far.weight, without.weight, rtol=1e-5, atol=1e-4)


def test_refinement_rounds_default_and_config():
    raw = json.loads((BUNDLED_REPOSITORY / "omniglot-conv4" / "2" / "config.json").read_text())
    assert ModelConfig.from_dict(raw).default_refinement_steps == DEFAULT_REFINEMENT_STEPS
    raw["defaults"]["refinement_steps"] = 5
    assert ModelConfig.from_dict(raw).default_refinement_steps == 5
    raw["defaults"]["refinement_steps"] = -1
    with pytest.raises(ConfigError, match="refinement_steps"):
        ModelConfig.from_dict(raw)


def log(scores: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(scores, 1e-30))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_transductive_classify_answers_each_query_with_the_others_in_view(client, episode, distance):
    support, labels = as_tensor(episode.support), labels_of(episode, episode.support_labels)
    queries, truth = as_tensor(episode.query), np.array(labels_of(episode, episode.query_labels))
    prototype = client.classify(support, labels, queries, distance=distance)
    transductive = client.classify(support, labels, queries, method="transductive", distance=distance)
    assert (transductive.method, transductive.distance) == ("transductive", distance)
    assert np.mean(np.array(transductive.labels) == truth) >= np.mean(np.array(prototype.labels) == truth)
    assert not np.allclose(log(transductive.scores), log(prototype.scores), atol=1e-2)  # scores saturate at 5-shot
    # Whether a query is any class at all is still judged against the support set alone.
    np.testing.assert_allclose([p.known_score for p in transductive.predictions],
                               [p.known_score for p in prototype.predictions], rtol=1e-5)
    # Zero rounds is the prototype answer; a query sent alone gets a different answer than in company.
    zero = client.classify(support, labels, queries, method="transductive", steps=0, distance=distance)
    np.testing.assert_allclose(zero.scores, prototype.scores, rtol=1e-5, atol=1e-6)
    alone = client.classify(support, labels, queries[:1], method="transductive", distance=distance)
    assert not np.allclose(log(alone.scores[0]), log(transductive.scores[0]), atol=1e-2)


def test_get_model_reports_the_default_rounds(client):
    assert client.get_model().default_refinement_steps == DEFAULT_REFINEMENT_STEPS
