"""Few-shot accuracy on Omniglot ``evaluation``, the held-out alphabets.

    python -m metalearn.evaluate                       # in-process, bundled model
    python -m metalearn.evaluate --target localhost:50051   # through a running server

Both ways run the served artifacts: in-process uses the server's own
execution layer (ONNX Runtime sessions of the model version), and over gRPC
every episode is one ``Classify`` call.  The episodes come from a seed, so the
two ways see the same episodes and agree to within float rounding.  Accuracy
is the mean over episodes of query accuracy, with a 95% confidence interval
(1.96 standard errors), as the published tables report it; beside it the
expected calibration error of the served probabilities (15 bins), which says
whether a score of 0.9 is right nine times in ten.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from metalearn.data import FewShotImages, load_split, to_model_input
from metalearn.episodes import Episode, EpisodeSampler

#: (ways, shots) of the published Omniglot table.
COLUMNS = ((5, 1), (5, 5), (20, 1), (20, 5))
METHODS = ("prototype", "finetune")

#: Query probabilities ``[queries, ways]`` of an episode, columns in class order 0 … ways-1.
Classifier = Callable[[Episode, str], np.ndarray]
ECE_BINS = 15


@dataclass(frozen=True)
class Accuracy:
    ways: int
    shots: int
    method: str
    mean: float
    ci95: float
    ece: float
    episodes: int

    def __str__(self) -> str:
        return f"{100 * self.mean:.2f} ± {100 * self.ci95:.2f} (ECE {100 * self.ece:.1f})"


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


def in_process(repository: Path, model: str = "", version: str = "") -> Classifier:
    """Classify with the server's execution layer, no gRPC."""
    from metalearn_server.execution.repository import ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    served = ModelRepository(repository, resolve_providers(["CPUExecutionProvider"])).get(model, version)

    def classify(episode: Episode, method: str) -> np.ndarray:
        embeddings = served.embed(to_model_input(np.concatenate([episode.support, episode.query])))
        support, query = embeddings[: len(episode.support)], embeddings[len(episode.support) :]
        onehot = np.eye(len(episode.classes), dtype=np.float32)[episode.support_labels]
        adaptation = served.config.default_adaptation if method == "finetune" else None
        head = served.build_head(support, onehot, served.config.default_distance, adaptation)
        return served.score(query, head)

    return classify


def over_grpc(target: str, model: str = "", version: str = "") -> Classifier:
    """Classify with one ``Classify`` call per episode to a running server."""
    from metalearn_client import Client

    client = Client(target, timeout=60.0)

    def classify(episode: Episode, method: str) -> np.ndarray:
        labels = [str(label) for label in episode.support_labels]
        result = client.classify(to_model_input(episode.support), labels, to_model_input(episode.query),
                                 model=model, version=version, method=method)
        return result.scores[:, np.argsort([int(label) for label in result.classes])]

    return classify


def evaluate(classify: Classifier, data: FewShotImages, ways: int, shots: int, method: str,
             episodes: int, queries: int = 15, seed: int = 0) -> Accuracy:
    sampler = EpisodeSampler(data, ways, shots, queries, seed=seed)
    accuracies, probabilities, labels = [], [], []
    for _ in tqdm(range(episodes), desc=f"{ways}-way {shots}-shot {method}", leave=False):
        episode = sampler.sample()
        probs = classify(episode, method)
        accuracies.append(float((probs.argmax(1) == episode.query_labels).mean()))
        probabilities.append(probs)
        labels.append(episode.query_labels)
    values = np.array(accuracies)
    return Accuracy(ways, shots, method, float(values.mean()),
                    float(1.96 * values.std(ddof=1) / math.sqrt(len(values))),
                    expected_calibration_error(np.concatenate(probabilities), np.concatenate(labels)), len(values))


def table(results: list[Accuracy]) -> str:
    """Markdown: one row per method, one column per (ways, shots)."""
    header = "| method | " + " | ".join(f"{w}-way {s}-shot" for w, s in COLUMNS) + " |"
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
    parser.add_argument("--data", help="Omniglot folder (default: $METALEARN_DATA or ../shared/data/omniglot)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--write-card", action="store_true",
                        help="(in-process) put the table into the evaluated version's MODEL_CARD.md")
    args = parser.parse_args(argv)
    if args.write_card and args.target:
        parser.error("--write-card evaluates the repository's files in-process; drop --target")

    classify = over_grpc(args.target, args.model, args.version) if args.target else \
        in_process(args.repository, args.model, args.version)
    data = load_split("evaluation", args.data)
    columns = [tuple(int(x) for x in column.split("x")) for column in args.columns.split(",")]
    results = [evaluate(classify, data, ways, shots, method, args.episodes, seed=args.seed)
               for method in args.methods.split(",") for ways, shots in columns]
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2))
    if args.write_card:
        write_card(args.repository, args.model, args.version, table(results), args.episodes)


def write_card(repository: Path, model: str, version: str, results: str, episodes: int) -> None:
    """Replace the ``## Accuracy`` section of the model card with these results."""
    from metalearn_server.execution.repository import ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    served = ModelRepository(repository, resolve_providers(["CPUExecutionProvider"])).get(model, version)
    card_path = served.directory / "MODEL_CARD.md"
    card = card_path.read_text().split("\n## Accuracy")[0].rstrip("\n")
    section = (f"## Accuracy\n\nOmniglot `evaluation` (alphabets never seen in training), {episodes} episodes per "
               "cell, 15 queries per class, mean ± 95% confidence interval, expected calibration error of the "
               f"served probabilities in brackets (`python -m metalearn.evaluate`):\n\n{results}\n")
    card_path.write_text(f"{card}\n\n{section}")


if __name__ == "__main__":
    main()
