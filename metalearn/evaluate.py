"""Few-shot accuracy on Omniglot ``evaluation``, the held-out alphabets.

    python -m metalearn.evaluate                       # in-process, bundled model
    python -m metalearn.evaluate --target localhost:50051   # through a running server

Both ways run the served artifacts: in-process uses the server's own
execution layer (ONNX Runtime sessions of the model version), and over gRPC
every episode is one ``Classify`` call.  The episodes come from a seed, so the
two ways see the same episodes and agree to within float rounding.  The
methods are the service's: prototypes, fast adaptation, and the transductive
refinement, which sees all of an episode's queries at once (15 per class,
balanced), the setting its published results assume.  Accuracy
is the mean over episodes of query accuracy, with a 95% confidence interval
(1.96 standard errors), as the published tables report it, first with the
defaults a caller gets (a query whose known-score is below the model's default
rejection threshold is answered "unknown", which counts as wrong), then with
rejection off, with the share of these known queries the default rejects and the
expected calibration error of the served probabilities (15 bins), which says
whether a score of 0.9 is right nine times in ten.  The open-set table mixes
each episode's queries with as many from characters outside it, at every
episode shape the default threshold is promised for (5 and 20 ways; 1, 2, 5, 10
and unequal 1 to 10 shots): the share of known queries the default rejects,
their accuracy with the defaults and with rejection off, the AUROC of the served
known-score, and the share of outside queries answered "unknown".

In-process, every distinct image is embedded once and reused by the episodes
that draw it (the same backbone, so the same embeddings up to float rounding):
the tables then cost minutes, not the hour that embedding each episode anew
would on two cores.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from metalearn.calibration import OPEN_SET_SHAPES
from metalearn.data import FewShotImages, load_split, to_model_input
from metalearn.episodes import EpisodeSampler

#: (ways, shots) of the published Omniglot table.
COLUMNS = ((5, 1), (5, 5), (20, 1), (20, 5))
METHODS = ("prototype", "finetune", "transductive")

#: (support images, support labels 0 … ways-1, query images, method) → query probabilities
#: ``[queries, ways]`` (columns in class order) and open-set known-scores ``[queries]``.
Classifier = Callable[[np.ndarray, np.ndarray, np.ndarray, str], tuple[np.ndarray, np.ndarray]]
ECE_BINS = 15
#: Episodes embedded at a time by the K sweep (see sweep_adaptation_steps).
SWEEP_CHUNK = 100


@dataclass(frozen=True)
class Accuracy:
    ways: int
    shots: int
    method: str
    mean: float  # rejection off
    ci95: float
    ece: float
    episodes: int
    default_mean: float  # with the default rejection threshold, a rejected query counting as wrong
    default_ci95: float
    known_rejected: float  # share of the (all known) queries the default threshold answers "unknown"

    def __str__(self) -> str:
        return (f"{100 * self.default_mean:.2f} ± {100 * self.default_ci95:.2f} / {100 * self.mean:.2f} ± "
                f"{100 * self.ci95:.2f} ({100 * self.known_rejected:.1f}% rejected, ECE {100 * self.ece:.1f})")


def ci95(accuracies: list[float]) -> float:
    """Half-width of the 95% confidence interval of a mean over episodes: 1.96 standard errors."""
    return float(1.96 * np.std(accuracies, ddof=1) / math.sqrt(len(accuracies)))


class Tally:
    """Episode by episode, what an :class:`Accuracy` is made of: each episode's accuracy with rejection off
    and at ``threshold`` (a query whose known-score is below it answered "unknown", which counts as wrong),
    the share rejected, and every probability for the calibration error."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.accuracies: list[float] = []  # rejection off, one per episode, in order
        self._default: list[float] = []
        self._rejected: list[float] = []
        self._probabilities: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    def add(self, probabilities: np.ndarray, known: np.ndarray, labels: np.ndarray) -> None:
        correct, accepted = probabilities.argmax(1) == labels, known >= self.threshold
        self.accuracies.append(float(correct.mean()))
        self._default.append(float((correct & accepted).mean()))
        self._rejected.append(float(1 - accepted.mean()))
        self._probabilities.append(probabilities)
        self._labels.append(labels)

    def accuracy(self, ways: int, shots: int, method: str) -> Accuracy:
        return Accuracy(ways, shots, method, float(np.mean(self.accuracies)), ci95(self.accuracies),
                        expected_calibration_error(np.concatenate(self._probabilities), np.concatenate(self._labels)),
                        len(self.accuracies), float(np.mean(self._default)), ci95(self._default),
                        float(np.mean(self._rejected)))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Guo et al. (2017): the confidence-weighted gap between confidence and accuracy, over equal-width bins."""
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    gap = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(gap)


@dataclass(frozen=True)
class Backend:
    """Where episodes are classified, and the served model's default rejection threshold."""

    classify: Classifier
    rejection_threshold: float


class EmbeddingCache:
    """The served backbone's embedding of each distinct image, computed the first time it is asked for."""

    def __init__(self, embed: Callable[[np.ndarray], np.ndarray]) -> None:
        self.embed, self.rows = embed, {}

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 images ``[N, 28, 28]`` → embeddings ``[N, D]``."""
        keys = [image.tobytes() for image in images]
        missing = list(dict.fromkeys(key for key in keys if key not in self.rows))
        if missing:
            new = np.frombuffer(b"".join(missing), np.uint8).reshape(len(missing), *images.shape[1:])
            self.rows.update(zip(missing, self.embed(to_model_input(new))))
        return np.stack([self.rows[key] for key in keys])


def in_process(repository: Path, model: str = "", version: str = "", distance: str = "") -> Backend:
    """Classify with the server's execution layer, no gRPC, each distinct image embedded once; ``distance``
    empty: the model's default."""
    from metalearn_server.execution.repository import ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    served = ModelRepository(repository, resolve_providers(["CPUExecutionProvider"])).get(model, version)
    distance = distance or served.config.default_distance
    embed = EmbeddingCache(served.embed)

    def classify(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
        embeddings = embed(np.concatenate([support, queries]))
        onehot = np.eye(labels.max() + 1, dtype=np.float32)[labels]
        head = served.head(method, embeddings[: len(support)], onehot, distance, served.config.method_defaults(method),
                           embeddings[len(support) :])
        scores = served.score(embeddings[len(support) :], head)
        return scores.probabilities, scores.known

    return Backend(classify, served.config.open_set[distance].threshold)


def over_grpc(target: str, model: str = "", version: str = "") -> Backend:
    """Classify with one ``Classify`` call per episode to a running server."""
    from metalearn_client import Client

    client = Client(target, timeout=60.0)

    def classify(support: np.ndarray, labels: np.ndarray, queries: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
        result = client.classify(to_model_input(support), [str(label) for label in labels], to_model_input(queries),
                                 model=model, version=version, method=method, rejection_threshold=0.0)
        order = np.argsort([int(label) for label in result.classes])
        return result.scores[:, order], np.array([p.known_score for p in result.predictions])

    return Backend(classify, client.get_model(model, version).default_rejection_threshold)


def evaluate(backend: Backend, data: FewShotImages, ways: int, shots: int, method: str,
             episodes: int, queries: int = 15, seed: int = 0) -> Accuracy:
    sampler = EpisodeSampler(data, ways, shots, queries, seed=seed)
    tally = Tally(backend.rejection_threshold)
    for _ in tqdm(range(episodes), desc=f"{ways}-way {shots}-shot {method}", leave=False):
        episode = sampler.sample()
        tally.add(*backend.classify(episode.support, episode.support_labels, episode.query, method),
                  episode.query_labels)
    return tally.accuracy(ways, shots, method)


@dataclass(frozen=True)
class OpenSet:
    """Episodes whose queries are half known characters and half characters outside the episode."""

    ways: int
    shots: int | tuple[int, int]  # a range: unequal shots, each class's drawn uniformly
    auroc: float  # of the known-score, known queries as positives
    known_accuracy: float  # right label and not rejected, at the default threshold
    unknown_rejected: float  # share of outside queries answered "unknown" at the default threshold
    threshold: float
    episodes: int
    known_rejected: float  # share of known queries answered "unknown" at the default threshold
    known_accuracy_off: float  # right label, rejection off

    @property
    def shape(self) -> str:
        shots = self.shots if isinstance(self.shots, int) else f"{self.shots[0]} to {self.shots[1]} (unequal)"
        return f"{self.ways}-way {shots}-shot"


def auroc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    _, inverse, counts = np.unique(np.concatenate([positives, negatives]), return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based rank of each distinct value, ties averaged
    positive_ranks = average_rank[inverse[: len(positives)]].sum()
    return float((positive_ranks - len(positives) * (len(positives) + 1) / 2) / (len(positives) * len(negatives)))


def evaluate_open_set(backend: Backend, data: FewShotImages, ways: int, shots: int | tuple[int, int], episodes: int,
                      queries: int = 15, seed: int = 0) -> OpenSet:
    """``queries`` per class, or as many as the drawings left beside the most shots."""
    most = shots if isinstance(shots, int) else shots[1]
    sampler = EpisodeSampler(data, ways, shots, min(queries, data.images.shape[1] - most), seed=seed)
    known_scores, unknown_scores, correct = [], [], []
    for _ in tqdm(range(episodes), desc=f"open set {ways}-way {shots}-shot", leave=False):
        episode, strangers = sampler.sample_open_set(unknown_ways=ways)
        probs, known = backend.classify(episode.support, episode.support_labels,
                                        np.concatenate([episode.query, strangers]), "prototype")
        inside = len(episode.query)
        known_scores.append(known[:inside])
        unknown_scores.append(known[inside:])
        correct.append(probs[:inside].argmax(1) == episode.query_labels)
    known_all, unknown_all, correct_all = np.concatenate(known_scores), np.concatenate(unknown_scores), np.concatenate(correct)
    accepted = known_all >= backend.rejection_threshold
    return OpenSet(ways, shots, auroc(known_all, unknown_all), float((correct_all & accepted).mean()),
                   float((unknown_all < backend.rejection_threshold).mean()), backend.rejection_threshold, episodes,
                   float(1 - accepted.mean()), float(correct_all.mean()))


def open_set_table(results: list[OpenSet]) -> str:
    lines = ["| open set (prototypes) | known queries rejected by the default | known accuracy, defaults | "
             "known accuracy, rejection off | AUROC | outside queries rejected |",
             "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.shape} | {100 * r.known_rejected:.2f}% | {100 * r.known_accuracy:.2f} | "
              f"{100 * r.known_accuracy_off:.2f} | {r.auroc:.3f} | {100 * r.unknown_rejected:.1f}% |" for r in results]
    return "\n".join(lines)


def sweep_adaptation_steps(repository: Path, data: FewShotImages, steps: list[int], episodes: int,
                           seed: int = 0, model: str = "", version: str = "") -> str:
    """Markdown: accuracy and head latency for each step count K (in-process), of fast adaptation
    (K gradient steps) and of the transductive method (K soft k-means rounds).

    The latency is the head alone (building the head and scoring the queries),
    the part of a request that K changes; the backbone's share is the same for
    every K, so each episode is embedded once and every (method, K) runs on it.
    Episodes go in chunks of ``SWEEP_CHUNK``: each (method, K) is timed over a
    run of episodes in a row, as it would be alone, while only a chunk's
    embeddings are held (1,000 episodes' would be about 0.9 GB).
    """
    from dataclasses import replace

    from metalearn_server.execution.repository import ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    served = ModelRepository(repository, resolve_providers(["CPUExecutionProvider"])).get(model, version)
    distance, defaults = served.config.default_distance, served.config.default_adaptation

    swept = [(method, k, replace(served.config.method_defaults(method), steps=k))
             for method in ("finetune", "transductive") for k in steps]
    accuracies: dict[tuple[str, int, int], list[float]] = {(m, k, shots): [] for m, k, _ in swept for shots in (1, 5)}
    seconds: dict[tuple[str, int], list[float]] = {(m, k): [] for m, k, _ in swept}
    for shots in (1, 5):
        sampler = EpisodeSampler(data, 5, shots, 15, seed=seed)
        for start in range(0, episodes, SWEEP_CHUNK):
            chunk = []
            for _ in range(min(SWEEP_CHUNK, episodes - start)):
                episode = sampler.sample()
                embeddings = served.embed(to_model_input(np.concatenate([episode.support, episode.query])))
                chunk.append((embeddings[: len(episode.support)], np.eye(5, dtype=np.float32)[episode.support_labels],
                              embeddings[len(episode.support) :], episode.query_labels))
            for method, k, adaptation in swept:
                for support, onehot, queries, truth in chunk:
                    started = time.perf_counter()
                    head = served.head(method, support, onehot, distance, adaptation, queries)
                    probabilities = served.score(queries, head).probabilities
                    if shots == 5:  # the latency column is the 5-shot episodes'
                        seconds[method, k].append(time.perf_counter() - started)
                    accuracies[method, k, shots].append(float((probabilities.argmax(1) == truth).mean()))

    def cell(method: str, k: int) -> str:
        return " | ".join([*(f"{100 * np.mean(accuracies[method, k, shots]):.2f} ± "
                             f"{100 * ci95(accuracies[method, k, shots]):.2f}" for shots in (1, 5)),
                           f"{1000 * np.median(seconds[method, k]):.2f} ms"])

    lines = [f"| K | fast adaptation (learning rate {defaults.learning_rate}), 5-way 1-shot | 5-way 5-shot | head "
             "latency, 5-way 5-shot, 75 queries | transductive, 5-way 1-shot | 5-way 5-shot | head latency |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k in steps:
        lines.append(f"| {k} | {cell('finetune', k)} | {cell('transductive', k)} |")
    return "\n".join(lines)


def table(results: list[Accuracy]) -> str:
    """Markdown: one row per method, one column per (ways, shots); each cell the accuracy with the defaults a
    caller gets, then with rejection off."""
    header = "| method: defaults / rejection off | " + " | ".join(f"{w}-way {s}-shot" for w, s in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 1)]
    for method in METHODS:
        cells = {(r.ways, r.shots): str(r) for r in results if r.method == method}
        if cells:
            lines.append(f"| {method} | " + " | ".join(cells.get(c, "–") for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="host:port of a running server (default: evaluate in-process)")
    parser.add_argument("--repository", type=Path, default=BUNDLED_REPOSITORY, help="model repository (in-process)")
    parser.add_argument("--model", default="")
    parser.add_argument("--version", default="")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per column and method")
    parser.add_argument("--columns", default="5x1,5x5,20x1,20x5", help="WAYSxSHOTS, comma-separated")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distance", default="", choices=["", "euclidean", "cosine"],
                        help="(in-process) the prototypes' distance and its open-set calibration "
                             "(default: the model's)")
    parser.add_argument("--sweep-steps", help="instead: accuracy and head latency of fast adaptation and of the "
                                              "transductive method for these step counts K, comma-separated "
                                              "(in-process)")
    parser.add_argument("--data", help="Omniglot folder (default: $METALEARN_DATA or ../shared/data/omniglot)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--write-card", action="store_true",
                        help="(in-process) put the table into the evaluated version's MODEL_CARD.md")
    args = parser.parse_args(argv)
    if args.write_card and args.target:
        parser.error("--write-card evaluates the repository's files in-process; drop --target")
    if args.distance and (args.target or args.write_card):
        parser.error("--distance is in-process only (GetModel gives the default distance's threshold alone), "
                     "and the model card's tables are the default distance's")

    if args.sweep_steps:
        steps = [int(k) for k in args.sweep_steps.split(",")]
        print(sweep_adaptation_steps(args.repository, load_split("evaluation", args.data), steps, args.episodes,
                                     args.seed, args.model, args.version))
        return
    backend = over_grpc(args.target, args.model, args.version) if args.target else \
        in_process(args.repository, args.model, args.version, args.distance)
    data = load_split("evaluation", args.data)
    columns = [tuple(int(x) for x in column.split("x")) for column in args.columns.split(",")]
    results = [evaluate(backend, data, ways, shots, method, args.episodes, seed=args.seed)
               for method in args.methods.split(",") for ways, shots in columns]
    open_set = [evaluate_open_set(backend, data, ways, shots, args.episodes, seed=args.seed)
                for ways, shots in OPEN_SET_SHAPES]
    print(table(results))
    print()
    print(open_set_table(open_set))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results + open_set], indent=2))
    if args.write_card:
        write_card(args.repository, args.model, args.version, table(results) + "\n\n" + open_set_table(open_set),
                   args.episodes)


def write_card(repository: Path, model: str, version: str, results: str, episodes: int) -> None:
    """Replace the ``## Accuracy`` section of the model card with these results."""
    from metalearn_server.execution.repository import ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    served = ModelRepository(repository, resolve_providers(["CPUExecutionProvider"])).get(model, version)
    card_path = served.directory / "MODEL_CARD.md"
    card = card_path.read_text().split("\n## Accuracy")[0].rstrip("\n")
    section = (f"## Accuracy\n\nOmniglot `evaluation` (alphabets never seen in training), {episodes} episodes per "
               "cell, 15 queries per class, mean ± 95% confidence interval: with the default rejection threshold (a "
               "query answered unknown counts as wrong) / with rejection off, then the share of known queries the "
               "default rejects and the expected calibration error of the served probabilities "
               f"(`python -m metalearn.evaluate`):\n\n{results}\n")
    card_path.write_text(f"{card}\n\n{section}")


if __name__ == "__main__":
    main()
