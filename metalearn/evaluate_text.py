"""Few-shot accuracy of the text model on CLINC150 intents of domains held out of training.

    python -m metalearn.evaluate_text                  # bundled text-minilm, in-process
    python -m metalearn.evaluate_text --write-card     # and put the tables into its model card

The test requests (``test`` split) of :data:`metalearn.clinc.TEST_DOMAINS`
are embedded once per encoder, and every episode is then scored on those
cached embeddings, so 1,000 episodes a column cost seconds.  Columns: 5-way
1-shot, 5-way 5-shot (intents drawn from all test domains) and 15-way 5-shot
(one whole domain: its intents are close neighbours), 15 queries per class.
Rows: the served model (its ONNX graphs, by the server's own execution
layer) with prototypes, fast adaptation and the transductive refinement;
beside it in the same run, on the same episodes, the sentence encoder as
published (no meta-training, fp32 PyTorch) with prototypes, and a TF-IDF
nearest-centroid baseline (scikit-learn; word and bigram TF-IDF fitted on
the training domains' requests, cosine to the support class means).  Each
cell is the accuracy with the served defaults (a query whose known-score is
below the model's default rejection threshold is answered "unknown", which
counts as wrong; the baselines have no rejection and answer every query), then
with rejection off, the share of these known queries the default rejects and
the expected calibration error.

Open set, in the same columns (``--open-set-only``: nothing else): each
episode's queries are mixed with as many of CLINC's out-of-scope test requests
(``oos_test``, none of them any intent); the AUROC of the served known-score,
and at the model's default rejection threshold the share of known queries it
rejects, the accuracy on known queries (a rejected one counts as wrong) and the
share of outsiders rejected.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from metalearn import clinc
from metalearn.evaluate import Accuracy, OpenSet, Tally, auroc, ci95, open_set_table

#: (ways, shots, one domain per episode).
COLUMNS = ((5, 1, False), (5, 5, False), (15, 5, True))
QUERIES = 15
#: (support embeddings, labels 0 … ways-1, query embeddings) → probabilities [queries, ways], known-scores.
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Row:
    name: str
    features: np.ndarray  # one row per test text (flat order of FewShotTexts.flat)
    scorer: Scorer
    #: Known-score below which a query is answered "unknown": the served model's default; 0 for the
    #: baselines, which have no calibrated rejection and answer every query.
    threshold: float = 0.0


def served_scorers(model, method: str) -> Scorer:
    distance = model.config.default_distance

    def score(support: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        onehot = np.eye(labels.max() + 1, dtype=np.float32)[labels]
        head = model.head(method, support, onehot, distance, model.config.method_defaults(method), queries)
        scores = model.score(queries, head)
        return scores.probabilities, scores.known

    return score


def nearest_centroid(support: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine to the class means; "probabilities" are one-hot (the baselines are scored on accuracy only)."""
    onehot = np.eye(labels.max() + 1, dtype=np.float32)[labels]
    centroids = onehot.T @ support / onehot.sum(0)[:, None]
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    similarity = queries @ centroids.T
    return np.eye(len(centroids), dtype=np.float32)[similarity.argmax(1)], np.ones(len(queries), np.float32)


def tfidf_features(train_texts: list[str], texts: list[str]) -> np.ndarray:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(train_texts)
    return vectorizer.transform(texts).toarray().astype(np.float32)


def evaluate_row(row: Row, data: clinc.FewShotTexts, ways: int, shots: int, same_domain: bool,
                 episodes: int, seed: int) -> tuple[Accuracy, float, list[float]]:
    """Accuracy over episodes, the median seconds an episode's scoring took, and each episode's accuracy with
    rejection off (every row draws the same episodes from the same seed, so rows can be compared pairwise)."""
    sampler = clinc.TextEpisodeSampler(data, ways, shots, QUERIES, seed=seed, same_domain=same_domain)
    tally, seconds = Tally(row.threshold), []
    for _ in tqdm(range(episodes), desc=f"{row.name} {ways}-way {shots}-shot", leave=False, disable=None):
        episode = sampler.sample()
        started = time.perf_counter()
        probs, known = row.scorer(row.features[episode.support], episode.support_labels, row.features[episode.query])
        seconds.append(time.perf_counter() - started)
        tally.add(probs, known, episode.query_labels)
    return tally.accuracy(ways, shots, row.name), float(np.median(seconds)), tally.accuracies


def evaluate_open_set(scorer: Scorer, embeddings: np.ndarray, outsiders: np.ndarray, data: clinc.FewShotTexts,
                      ways: int, shots: int, same_domain: bool, threshold: float, episodes: int,
                      seed: int) -> OpenSet:
    sampler = clinc.TextEpisodeSampler(data, ways, shots, QUERIES, seed=seed, same_domain=same_domain)
    rng = np.random.default_rng(seed)
    known_scores, unknown_scores, correct = [], [], []
    for _ in tqdm(range(episodes), desc=f"open set {ways}-way {shots}-shot", leave=False, disable=None):
        episode = sampler.sample()
        strangers = outsiders[rng.choice(len(outsiders), len(episode.query), replace=False)]
        probs, known = scorer(embeddings[episode.support], episode.support_labels,
                              np.concatenate([embeddings[episode.query], strangers]))
        inside = len(episode.query)
        known_scores.append(known[:inside])
        unknown_scores.append(known[inside:])
        correct.append(probs[:inside].argmax(1) == episode.query_labels)
    known_all, unknown_all, right = np.concatenate(known_scores), np.concatenate(unknown_scores), np.concatenate(correct)
    accepted = known_all >= threshold
    return OpenSet(ways, shots, auroc(known_all, unknown_all), float((right & accepted).mean()),
                   float((unknown_all < threshold).mean()), threshold, episodes, float((~accepted).mean()),
                   float(right.mean()))


def paired_table(per_episode: dict[tuple[str, int, int], list[float]], baseline: str, others: list[str]) -> str:
    """Each row's accuracy minus ``baseline``'s on the same episodes (rejection off), mean ± 95% interval: two
    methods' own intervals can overlap while one is better in most episodes."""
    lines = [f"| paired, minus {baseline} | " + " | ".join(column_name(*c) for c in COLUMNS) + " |",
             "|" + " --- |" * (len(COLUMNS) + 1)]
    for name in others:
        cells = []
        for ways, shots, _ in COLUMNS:
            differences = np.subtract(per_episode[name, ways, shots], per_episode[baseline, ways, shots])
            mean = round(100 * differences.mean(), 2) + 0.0  # no "-0.00"
            cells.append(f"{mean:+.2f} ± {100 * ci95(list(differences)):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def column_name(ways: int, shots: int, same_domain: bool) -> str:
    return f"{ways}-way {shots}-shot" + (" (one domain)" if same_domain else "")


def table(results: list[Accuracy], rows: list[str]) -> str:
    header = "| method: defaults / rejection off | " + " | ".join(column_name(*c) for c in COLUMNS) + " |"
    lines = [header, "|" + " --- |" * (len(COLUMNS) + 1)]
    for name in rows:
        cells = [next((str(r) for r in results if r.method == name and (r.ways, r.shots) == (w, s)), "–")
                 for w, s, _ in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository
    from metalearn_server.execution.runtime import resolve_providers

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=BUNDLED_REPOSITORY)
    parser.add_argument("--model", default="text-minilm")
    parser.add_argument("--version", default="")
    parser.add_argument("--episodes", type=int, default=1000, help="episodes per column and row")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="CLINC150 folder (default: $METALEARN_CLINC_DATA or ../shared/data/clinc150)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--write-card", action="store_true", help="put the tables into the version's MODEL_CARD.md")
    parser.add_argument("--open-set-only", action="store_true",
                        help="only the open-set table (the served model's; for a recalibrated open set)")
    args = parser.parse_args(argv)
    if args.write_card and args.open_set_only:
        parser.error("--write-card writes the whole accuracy section: run it without --open-set-only")

    import torch

    from metalearn.minilm import load_pretrained
    from metalearn.text_encoding import embed_texts, make_tokenizer

    torch.set_num_threads(args.threads)
    served = ModelRepository(args.repository, resolve_providers(["CPUExecutionProvider"]),
                             intra_op_threads=args.threads).get(args.model, args.version)
    data = clinc.load("test", args.data)
    texts, _ = data.flat()
    outsider_texts = list(data.outsiders)
    started = time.perf_counter()
    embeddings = served.embed(texts + outsider_texts)
    per_text = (time.perf_counter() - started) / len(embeddings)
    embeddings, outsiders = embeddings[: len(texts)], embeddings[len(texts):]
    results, rows = [], []
    threshold = served.config.open_set[served.config.default_distance].threshold
    if not args.open_set_only:
        frozen, tokenizer_json = load_pretrained()
        frozen_embeddings = embed_texts(frozen, make_tokenizer(tokenizer_json, served.config.text.max_tokens), texts)
        train_texts, _ = clinc.load("train", args.data).flat()
        rows = [Row(f"meta-trained, {name}", embeddings, served_scorers(served, method), threshold)
                for method, name in (("prototype", "prototypes"), ("finetune", "fast adaptation"),
                                     ("transductive", "transductive"))]
        rows += [Row("frozen encoder, prototypes", frozen_embeddings, served_scorers(served, "prototype")),
                 Row("TF-IDF nearest centroid", tfidf_features(train_texts, texts), nearest_centroid)]
        per_episode = {}
        for row in rows:
            for ways, shots, same in COLUMNS:
                accuracy, _, per_episode[row.name, ways, shots] = evaluate_row(row, data, ways, shots, same,
                                                                              args.episodes, args.seed)
                results.append(accuracy)
        paired = paired_table(per_episode, rows[0].name, [row.name for row in rows[1:3]])
    open_set = [evaluate_open_set(served_scorers(served, "prototype"), embeddings, outsiders, data, ways, shots, same,
                                  threshold, args.episodes, args.seed) for ways, shots, same in COLUMNS]
    accuracy, outside = table(results, [row.name for row in rows]), open_set_table(open_set)
    if rows:
        accuracy += "\n\n" + paired
    print(*([accuracy, ""] if rows else []), outside, "", f"served backbone: {1000 * per_text:.2f} ms per text "
          f"({len(texts) + len(outsider_texts)} texts in batches of {served.batch_items}, {args.threads} threads)",
          sep="\n")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results + open_set], indent=2))
    if args.write_card:
        write_card(served.directory, accuracy + "\n\n" + outside, args.episodes)


def write_card(directory: Path, results: str, episodes: int) -> None:
    """Replace the tables of the model card's ``## Accuracy`` section (and the paragraph that introduces
    them) with these results; notes written below the tables, such as an earlier calibration's, stay."""
    card_path = directory / "MODEL_CARD.md"
    card, _, old = card_path.read_text().partition("\n## Accuracy")
    blocks = old.strip("\n").split("\n\n")
    first_table = next((i for i, block in enumerate(blocks) if block.startswith("|")), len(blocks))
    notes = next((i for i in range(first_table, len(blocks)) if not blocks[i].startswith("|")), len(blocks))
    section = (f"## Accuracy\n\nCLINC150 `test` requests of the held-out domains {', '.join(clinc.TEST_DOMAINS)}, "
               f"{episodes} episodes per cell, {QUERIES} queries per class, mean ± 95% confidence interval with the "
               "served defaults (a query below the default rejection threshold counts as wrong; the baselines have "
               "no rejection) / with rejection off, the share of known queries the default rejects and the expected "
               "calibration error of the served probabilities in brackets (the baselines give one-hot answers); "
               "then each served method minus the prototypes on the same episodes (rejection off, mean ± 95% "
               "interval of the per-episode differences); open set against `oos_test` "
               "(`python -m metalearn.evaluate_text`):\n\n"
               f"{results}\n")
    kept = "\n\n".join(blocks[notes:])
    card_path.write_text(card.rstrip("\n") + f"\n\n{section}" + (f"\n{kept}\n" if kept else ""))

if __name__ == "__main__":
    main()
