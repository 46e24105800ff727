"""CLINC150 as few-shot text classes, split by domain.

A class is an intent; its items are the crowd-written requests of one split of
``data_full.json``.  As the data set's README asks, whole domains are held out:
meta-training reads the ``train`` requests of :data:`TRAIN_DOMAINS`, model
selection and the served calibration the ``val`` requests of
:data:`VALIDATION_DOMAINS`, and the few-shot test the ``test`` requests of
:data:`TEST_DOMAINS`, so no test intent (nor any of its domain's neighbours)
was seen in training.  The ``oos_*`` requests, which belong to no intent, are
the open-set outsiders of the same split.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DATA_SUBDIR = Path("shared") / "data" / "clinc150"
TEST_DOMAINS = ("kitchen_and_dining", "travel", "utility")
VALIDATION_DOMAINS = ("home", "meta")
TRAIN_DOMAINS = ("banking", "credit_cards", "auto_and_commute", "work", "small_talk")
SPLITS = {"train": TRAIN_DOMAINS, "val": VALIDATION_DOMAINS, "test": TEST_DOMAINS}


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The CLINC150 folder: the argument, else ``$METALEARN_CLINC_DATA``, else the nearest
    ``shared/data/clinc150`` at or above the working directory."""
    chosen = explicit or os.environ.get("METALEARN_CLINC_DATA")
    candidates = [Path(chosen)] if chosen else [p / DEFAULT_DATA_SUBDIR for p in (Path.cwd(), *Path.cwd().parents)]
    for path in candidates:
        if (path / "data_full.json").is_file():
            return path
    raise FileNotFoundError(f"no data_full.json in {chosen or 'shared/data/clinc150 above ' + str(Path.cwd())}: "
                            "pass --data DIR or set METALEARN_CLINC_DATA")


def file_sha256(directory: str | os.PathLike | None = None) -> str:
    return hashlib.sha256((data_dir(directory) / "data_full.json").read_bytes()).hexdigest()


@dataclass(frozen=True)
class FewShotTexts:
    """Requests grouped by intent: ``texts[c]`` are the requests of intent ``intents[c]``."""

    texts: tuple[tuple[str, ...], ...]
    intents: tuple[str, ...]
    domains: tuple[str, ...]  # the domain of each intent
    outsiders: tuple[str, ...]  # out-of-scope requests of the same split

    @property
    def num_classes(self) -> int:
        return len(self.intents)

    def flat(self) -> tuple[list[str], np.ndarray]:
        """Every text once, and its class index (the order :class:`TextEpisodeSampler` indexes)."""
        texts = [text for group in self.texts for text in group]
        labels = np.repeat(np.arange(self.num_classes), [len(group) for group in self.texts])
        return texts, labels

    def by_class(self, embeddings: np.ndarray) -> np.ndarray:
        """Embeddings ``[N, D]`` of :meth:`flat`'s texts as ``[classes, texts per class, D]``, the layout
        :mod:`metalearn.calibration`'s open-set fit samples from (every CLINC intent has as many
        requests in a split)."""
        sizes = {len(group) for group in self.texts}
        if len(sizes) != 1:
            raise ValueError(f"intents have {sorted(sizes)} requests; the open-set fit needs as many in each")
        return embeddings.reshape(self.num_classes, sizes.pop(), -1)


def load(split: str, directory: str | os.PathLike | None = None) -> FewShotTexts:
    """The ``split`` requests (``train``, ``val`` or ``test``) of that split's domains."""
    folder = data_dir(directory)
    full = json.loads((folder / "data_full.json").read_text())
    domains = json.loads((folder / "domains.json").read_text())
    groups: dict[str, list[str]] = {}
    for text, intent in full[split]:
        groups.setdefault(intent, []).append(text)
    intents = [(intent, domain) for domain in SPLITS[split] for intent in domains[domain]]
    return FewShotTexts(texts=tuple(tuple(groups[intent]) for intent, _ in intents),
                        intents=tuple(intent for intent, _ in intents),
                        domains=tuple(domain for _, domain in intents),
                        outsiders=tuple(text for text, _ in full[f"oos_{split}"]))


@dataclass(frozen=True)
class TextEpisode:
    """Indices into :meth:`FewShotTexts.flat`, and labels ``0 … ways-1`` in the order the classes were drawn."""

    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


class TextEpisodeSampler:
    """N-way K-shot episodes of text indices, reproducible from a seed.

    ``same_domain``: all ways from one domain (15-way is then a whole domain, the hardest case:
    its intents are neighbours, such as ``pay_bill`` and ``bill_balance``)."""

    def __init__(self, data: FewShotTexts, ways: int, shots: int, queries: int, seed: int = 0,
                 same_domain: bool = False) -> None:
        smallest = min(len(group) for group in data.texts)
        if shots + queries > smallest:
            raise ValueError(f"{shots} shots + {queries} queries exceed the {smallest} requests of some intent")
        self.data, self.ways, self.shots, self.queries = data, ways, shots, queries
        self.same_domain = same_domain
        self.offsets = np.cumsum([0, *(len(group) for group in data.texts)])
        self.domains = {domain: np.flatnonzero(np.array(data.domains) == domain) for domain in set(data.domains)}
        pool = max(map(len, self.domains.values())) if same_domain else data.num_classes
        if ways > pool:
            raise ValueError(f"{ways}-way episodes need {ways} intents, there are {pool}")
        self.rng = np.random.default_rng(seed)

    def sample(self) -> TextEpisode:
        if self.same_domain:
            domain = sorted(self.domains)[self.rng.integers(len(self.domains))]
            classes = self.rng.choice(self.domains[domain], size=self.ways, replace=False)
        else:
            classes = self.rng.choice(self.data.num_classes, size=self.ways, replace=False)
        picks = np.stack([self.offsets[c] + self.rng.choice(self.offsets[c + 1] - self.offsets[c],
                                                            size=self.shots + self.queries, replace=False)
                          for c in classes])
        labels = np.repeat(np.arange(self.ways)[:, None], self.shots + self.queries, axis=1)
        return TextEpisode(support=picks[:, : self.shots].reshape(-1), support_labels=labels[:, : self.shots].reshape(-1),
                           query=picks[:, self.shots :].reshape(-1), query_labels=labels[:, self.shots :].reshape(-1))
