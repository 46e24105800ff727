"""Choosing the served defaults on validation episodes, never on ``evaluation``.

* The softmax temperature of each distance (temperature scaling, Guo et al.
  2017): raw negative distances between 64-d embeddings are in the hundreds,
  so an untempered softmax says 1.0 for nearly every query, right or wrong.
* The fast-adaptation step count and learning rate, picked from grids by
  validation accuracy after adaptation (mean over the episode shapes given:
  an image model's 5-way 5-shot at its default 10 steps, a text model's
  evaluation shapes including 15-way 5-shot within one domain).
* The open-set score: the probability that a query belongs to any support
  class at all, as a logistic function of its squared distance ``d`` to the
  nearest class divided by how that distance grows with fewer shots,

      u = d / (1 + shot_scale / n),    known(u) = 1 / (1 + exp((u − midpoint) / width))

  (``n`` the nearest class's shots; :mod:`metalearn_server.execution.open_set`),
  fitted on validation episodes of every shape a caller is promised (5 and 20
  ways; 1, 2, 5, 10 and unequal 1 to 10 shots) whose queries are half from the
  episode's classes and half from other characters (for a text model: out-of-scope
  requests, which are no intent at all); and the default rejection
  threshold, which keeps 99% of the known queries of every validation
  alphabet in every one of those shapes.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from metalearn.data import FewShotImages, to_model_input
from metalearn.episodes import EpisodeSampler
from metalearn.heads import FineTuneHead, LinearHead, as_head_input, prototype_init
from metalearn_server.execution.open_set import OpenSetCalibration

#: Half-decades up to the largest learning rate the server accepts (validation.Limits.max_learning_rate),
#: so the fit can choose any rate a caller could send.
LEARNING_RATE_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


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
def adaptation_accuracy(episodes: list[tuple[torch.Tensor, ...]], temperature: float, steps: int,
                        learning_rate: float, l2: float) -> float:
    """Query accuracy of the fine-tuned head (:class:`FineTuneHead`, euclidean) over ``episodes``."""
    adapt, score = FineTuneHead(), LinearHead()
    cosine, temperature_ = torch.tensor(False), torch.tensor(temperature)
    correct = total = 0
    for support, onehot, query, labels in episodes:
        weight, bias = adapt(support, onehot, cosine, temperature_, torch.tensor(steps),
                             torch.tensor(learning_rate), torch.tensor(l2))
        probs, _ = score(query, weight, bias, cosine, temperature_)
        correct += int((probs.argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


def fit_adaptation(shapes: list[list[tuple[torch.Tensor, ...]]], temperature: float, steps_grid: tuple[int, ...],
                   l2: float) -> tuple[dict[str, float], dict[tuple[int, float], list[float]]]:
    """The served ``adaptation`` defaults: the (steps, learning rate) of ``steps_grid`` × :data:`LEARNING_RATE_GRID`
    with the best mean validation accuracy over the episode ``shapes`` (ties: fewer steps, then the smaller
    rate), and every grid point's accuracies per shape (which ``recalibrate --adaptation`` prints)."""
    grid = {(steps, rate): [adaptation_accuracy(episodes, temperature, steps, rate, l2) for episodes in shapes]
            for steps in sorted(steps_grid) for rate in LEARNING_RATE_GRID}
    steps, rate = max(grid, key=lambda point: (float(np.mean(grid[point])), -point[0], -point[1]))
    return {"steps": steps, "learning_rate": rate, "l2": l2}, grid


KNOWN_ACCEPTANCE = 0.99
#: The episode shapes the default threshold keeps its promise at: (ways, shots), shots a range for unequal ones.
OPEN_SET_SHAPES = tuple((ways, shots) for ways in (5, 20) for shots in (1, 2, 5, 10, (1, 10)))
#: Validation episodes per shape (5 queries per class, and as many from outside), and the shot scales tried.
OPEN_SET_EPISODES = {5: 300, 20: 100}
SHOT_SCALE_GRID = np.round(np.arange(0.0, 2.01, 0.05), 2)


def embed_classes(embed: Callable[[np.ndarray], np.ndarray], data: FewShotImages) -> np.ndarray:
    """Embeddings ``[classes, drawers, D]`` of every image, each embedded once (episodes then reuse them)."""
    images = data.images.reshape(-1, *data.images.shape[2:])
    chunks = [embed(to_model_input(images[start:start + 512])) for start in range(0, len(images), 512)]
    return np.concatenate(chunks).reshape(*data.images.shape[:2], -1).astype(np.float32)


@torch.no_grad()
def open_set_episodes(embeddings: np.ndarray, ways: int, shots: int | tuple[int, int], episodes: int, seed: int,
                      cosine: bool, queries: int = 5, outsiders: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per query of open-set episodes (as many outside queries as known ones): its squared distance to
    the nearest class under the prototype head, that class's shots, whether it is known, and its class
    (-1 for an outsider).  The outside queries are drawings of further classes, or, given ``outsiders``
    ``[M, D]`` (a text split's out-of-scope requests, which belong to no class), drawn from those."""
    flag, out = torch.tensor(cosine), {"distance": [], "shots": [], "known": [], "classes": []}
    # The sampler draws indices, so episodes come from the cached embeddings without touching an image.
    classes, drawers = embeddings.shape[:2]
    index = FewShotImages(np.arange(classes * drawers).reshape(classes, drawers), np.zeros(classes))
    sampler = EpisodeSampler(index, ways=ways, shots=shots, queries=queries, seed=seed)
    flat = torch.from_numpy(embeddings.reshape(classes * drawers, -1))
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        episode, strangers = sampler.sample_open_set(unknown_ways=0 if outsiders is not None else ways)
        if outsiders is None:
            items = np.concatenate([episode.query, strangers])
            vectors, item_classes = flat[items], items // drawers
        else:
            picked = rng.choice(len(outsiders), len(episode.query), replace=False)
            vectors = torch.cat([flat[episode.query], torch.from_numpy(outsiders[picked])])
            item_classes = np.concatenate([episode.query // drawers, np.full(len(picked), -1)])
        onehot = torch.nn.functional.one_hot(torch.from_numpy(episode.support_labels), ways).float()
        weight, bias = prototype_init(flat[episode.support], onehot, flag)
        probabilities, distance = LinearHead()(vectors, weight, bias, flag, torch.tensor(1.0))
        out["distance"].append(distance.numpy())
        out["shots"].append(onehot.sum(0).numpy()[probabilities.argmax(1).numpy()])
        out["known"].append(np.arange(len(vectors)) < len(episode.query))
        out["classes"].append(item_classes)
    return {key: np.concatenate(values) for key, values in out.items()}


def fit_open_set(embeddings: np.ndarray, alphabets: np.ndarray, cosine: bool, seed: int = 3,
                 outsiders: np.ndarray | None = None) -> dict[str, float]:
    """The known-score's shot scale, logistic and default threshold from validation ``embeddings``
    ``[classes, drawers, D]`` (``alphabets[c]`` names class c's alphabet, or a text class's domain),
    with outside queries from further classes or from ``outsiders`` (see :func:`open_set_episodes`).

    * ``shot_scale``: the one under which the distance that 99% of known queries stay within is most
      alike across the shapes (version 5: 0.8, about 30 at every shape, where the raw distance's is
      54 at 1 shot and 33 at 10);
    * ``midpoint`` and ``width``: maximum likelihood over every shape's queries together;
    * ``threshold``: the known-score of the distance that 99% of known queries stay within in the widest
      shape, times the spread of the widest validation alphabet's characters over the average
      character's.  Alphabets differ: at the threshold that keeps 99% of all 5 validation alphabets'
      known queries together, one rejects none of its own and another 1.8%, so a threshold fitted to
      the average alphabet breaks its promise on a wider one.  The tails of single alphabets are too
      few queries to fit to (one alphabet's 1% tail moves from 23 to 41 between shapes), their mean
      spreads are steady, so the margin is the widest mean spread (version 5: 1.20 times the
      average): the default keeps 99% of the known queries of alphabets whose drawings spread that
      much wider than the validation alphabets do on average.
    """
    shapes = [open_set_episodes(embeddings, ways, shots, OPEN_SET_EPISODES[ways], seed + i, cosine,
                                outsiders=outsiders)
              for i, (ways, shots) in enumerate(OPEN_SET_SHAPES)]

    def known_tails(scale: float) -> np.ndarray:
        return np.array([np.quantile((s["distance"] / (1 + scale / s["shots"]))[s["known"]], KNOWN_ACCEPTANCE)
                         for s in shapes])

    shot_scale = float(min(SHOT_SCALE_GRID, key=lambda scale: np.ptp(np.log(known_tails(scale)))))
    distance = np.concatenate([s["distance"] / (1 + shot_scale / s["shots"]) for s in shapes]).astype(np.float64)
    known = np.concatenate([s["known"] for s in shapes])
    fitted = {**_logistic(distance, known), "shot_scale": shot_scale}

    # Each class's spread: the mean squared distance of its drawings from their mean, as the head sees them.
    drawings = torch.from_numpy(embeddings)
    drawings = as_head_input(drawings, torch.tensor(cosine)).numpy()
    spread = ((drawings - drawings.mean(1, keepdims=True)) ** 2).sum(-1).mean(1)
    widest = max(spread[alphabets == name].mean() for name in np.unique(alphabets)) / spread.mean()
    limit = widest * known_tails(shot_scale).max()
    return {**fitted, "threshold": float(OpenSetCalibration(fitted["midpoint"], fitted["width"], 0.0)
                                         .known_score(np.array([limit]), np.array([1.0]))[0])}


def fit_open_sets(embeddings: np.ndarray, alphabets: np.ndarray,
                  outsiders: np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """A config's ``open_set`` section: :func:`fit_open_set` for each distance."""
    return {distance: fit_open_set(embeddings, alphabets, cosine=distance == "cosine", outsiders=outsiders)
            for distance in ("euclidean", "cosine")}


def _logistic(distance: np.ndarray, known: np.ndarray) -> dict[str, float]:
    """``known(u) = 1 / (1 + exp((u − midpoint) / width))`` by maximum likelihood."""
    u = torch.from_numpy(distance)
    target = torch.from_numpy(known).double()
    scale = float(u.std())
    midpoint = torch.tensor(float(u.median()) / scale, dtype=torch.float64, requires_grad=True)
    log_width = torch.zeros((), dtype=torch.float64, requires_grad=True)
    _minimise([midpoint, log_width], lambda: torch.nn.functional.binary_cross_entropy_with_logits(
        (midpoint - u / scale) / log_width.exp(), target))
    return {"midpoint": float(midpoint.detach()) * scale, "width": float(log_width.detach().exp()) * scale}

