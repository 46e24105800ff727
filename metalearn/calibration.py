"""Choosing the served defaults on validation episodes, never on ``evaluation``.

* The softmax temperature of each distance (temperature scaling, Guo et al.
  2017): raw negative distances between 64-d embeddings are in the hundreds,
  so an untempered softmax says 1.0 for nearly every query, right or wrong.
* The fast-adaptation learning rate, picked from a grid for the default step
  count by 5-shot validation accuracy.
* The open-set score: the probability that a query belongs to any support
  class at all, as a logistic function of its squared distance ``d`` to the
  nearest class,

      known(d) = 1 / (1 + exp((d − midpoint) / width)),

  fitted on validation episodes whose queries are half from the episode's
  classes and half from other characters; and the default rejection threshold,
  the known-score that 99% of known validation queries exceed.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from metalearn.data import FewShotImages, to_model_input
from metalearn.episodes import EpisodeSampler
from metalearn.heads import FineTuneHead, LinearHead, as_head_input, prototype_init
from metalearn_server.execution.open_set import OpenSetCalibration

LEARNING_RATE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


@torch.no_grad()
def embedded_episodes(backbone: torch.nn.Module, data: FewShotImages, episodes: int, shots: int,
                      seed: int, ways: int = 5, queries: int = 15) -> list[tuple[torch.Tensor, ...]]:
    """``(support, one-hot, queries, query labels)`` embeddings of validation episodes."""
    backbone.eval()
    sampler = EpisodeSampler(data, ways=ways, shots=shots, queries=queries, seed=seed)
    out = []
    for _ in range(episodes):
        episode = sampler.sample()
        embeddings = backbone(torch.from_numpy(to_model_input(np.concatenate([episode.support, episode.query]))))
        support, query = embeddings[: len(episode.support)], embeddings[len(episode.support) :]
        onehot = torch.nn.functional.one_hot(torch.from_numpy(episode.support_labels), ways).float()
        out.append((support, onehot, query, torch.from_numpy(episode.query_labels)))
    return out


def fit_temperature(episodes: list[tuple[torch.Tensor, ...]], cosine: bool) -> float:
    """The T minimising validation NLL of the prototype head's ``softmax(logits / T)``."""
    flag = torch.tensor(cosine)
    logits, labels = [], []
    for support, onehot, query, query_labels in episodes:
        weight, bias = prototype_init(support, onehot, flag)
        logits.append(as_head_input(query, flag) @ weight.T + bias)
        labels.append(query_labels)
    return scaling_temperature(torch.cat(logits), torch.cat(labels))


def scaling_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising ``cross_entropy(logits / T, labels)``.

    The loss is convex in 1/T, so it has one minimum; a strong-Wolfe line search
    finds it whatever the logits' scale (euclidean logits span tens, cosine ones
    two units, so their temperatures differ by orders of magnitude).  A fixed
    step can overshoot into a degenerate T near 0 instead.
    """
    logits = logits.double()
    log_t = logits.std().log().detach().requires_grad_(True)  # a start on the logits' own scale
    _minimise([log_t], lambda: torch.nn.functional.cross_entropy(logits / log_t.exp(), labels))
    return float(log_t.detach().exp())


def _minimise(parameters: list[torch.Tensor], loss: Callable[[], torch.Tensor]) -> None:
    """L-BFGS with a strong-Wolfe line search: robust to the scale of a small smooth problem."""
    optimiser = torch.optim.LBFGS(parameters, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        value = loss()
        value.backward()
        return value

    optimiser.step(closure)


@torch.no_grad()
def fit_learning_rate(episodes: list[tuple[torch.Tensor, ...]], temperature: float, steps: int, l2: float) -> float:
    """The grid learning rate with the best validation accuracy after ``steps`` steps (ties: the smaller)."""
    adapt, score = FineTuneHead(), LinearHead()
    cosine, temperature_ = torch.tensor(False), torch.tensor(temperature)
    best_rate, best_accuracy = LEARNING_RATE_GRID[0], -1.0
    for rate in LEARNING_RATE_GRID:
        correct = total = 0
        for support, onehot, query, labels in episodes:
            weight, bias = adapt(support, onehot, cosine, temperature_, torch.tensor(steps),
                                 torch.tensor(rate), torch.tensor(l2))
            probs, _ = score(query, weight, bias, cosine, temperature_)
            correct += int((probs.argmax(-1) == labels).sum())
            total += len(labels)
        if correct / total > best_accuracy:
            best_rate, best_accuracy = rate, correct / total
    return best_rate


KNOWN_ACCEPTANCE = 0.99


@torch.no_grad()
def nearest_class_distances(backbone: torch.nn.Module, data: FewShotImages, episodes: int, seed: int,
                            cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest support class of known and of unknown queries (1- and 5-shot, 5-way)."""
    backbone.eval()
    flag, known, unknown = torch.tensor(cosine), [], []
    for shots in (1, 5):
        sampler = EpisodeSampler(data, ways=5, shots=shots, queries=5, seed=seed + shots)
        for _ in range(episodes // 2):
            episode, strangers = sampler.sample_open_set(unknown_ways=5)
            images = np.concatenate([episode.support, episode.query, strangers])
            z = backbone(torch.from_numpy(to_model_input(images)))
            support, queries = z[: len(episode.support)], z[len(episode.support) :]
            onehot = torch.nn.functional.one_hot(torch.from_numpy(episode.support_labels), 5).float()
            weight, bias = prototype_init(support, onehot, flag)
            _, distance = LinearHead()(queries, weight, bias, flag, torch.tensor(1.0))
            known.append(distance[: len(episode.query)].numpy())
            unknown.append(distance[len(episode.query) :].numpy())
    return np.concatenate(known), np.concatenate(unknown)


def fit_open_set(known: np.ndarray, unknown: np.ndarray) -> dict[str, float]:
    """Logistic ``known(d)`` by maximum likelihood, and the default rejection threshold."""
    distance = torch.from_numpy(np.concatenate([known, unknown]).astype(np.float64))
    target = torch.cat([torch.ones(len(known)), torch.zeros(len(unknown))]).double()
    scale = float(distance.std())
    midpoint = torch.tensor(float(distance.median()) / scale, dtype=torch.float64, requires_grad=True)
    log_width = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise([midpoint, log_width], lambda: torch.nn.functional.binary_cross_entropy_with_logits(
        (midpoint - distance / scale) / log_width.exp(), target))
    fitted = {"midpoint": float(midpoint.detach()) * scale, "width": float(log_width.detach().exp()) * scale}
    scores = OpenSetCalibration(fitted["midpoint"], fitted["width"], threshold=0.0).known_score(known)
    threshold = float(np.quantile(scores, 1 - KNOWN_ACCEPTANCE))
    return {**fitted, "threshold": threshold}
