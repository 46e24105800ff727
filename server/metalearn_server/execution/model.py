"""One loaded model version: its ONNX Runtime sessions and the few-shot math around them.

Everything here is computation on arrays that were already validated: embed a
batch, build a head ``(W, b)`` from support embeddings (prototypes, or
prototypes adapted by gradient steps, or refined with the queries), score
queries with a head.  The graphs
come from :mod:`metalearn.heads` by way of ONNX, so serving needs no torch and
runs every step on the backbone's execution provider.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from metalearn_server.execution.item_input import input_adapter
from metalearn_server.execution.model_config import Adaptation, ModelConfig
from metalearn_server.execution.runtime import create_session, run

#: Items per backbone call on the CPU provider.  ONNX Runtime's cost per image rises with the batch on
#: this CPU (Conv-4 rotation ensemble: 0.62 ms at 64 images, 0.79 at 128, 1.6 at 512, 2.4 at 2,048), and
#: its activations grow with it (a 6,144-image call peaked at 8.6 GB), so big inputs run in chunks.
CPU_BATCH_ITEMS = 64
#: Multiply-adds of one scoring step (queries × classes × embedding size), about a backbone chunk's time
#: here: 4,096 queries against 512 classes are 36 short turns of the fair scheduler instead of one of half
#: a second that every other caller waits behind, while a 5-way episode's queries stay one step.
SCORE_STEP_MACS = 1 << 27


@dataclass(frozen=True)
class Scores:
    """Class probabilities ``[Q, classes]`` and each query's open-set known-score ``[Q]``."""

    probabilities: np.ndarray
    known: np.ndarray


@dataclass(frozen=True)
class Head:
    """A linear classifier over embeddings: ``softmax((z·Wᵀ + b) / T)``."""

    weight: np.ndarray  # [classes, embedding_size]
    bias: np.ndarray  # [classes]
    distance: str
    temperature: float
    # The prototype head, which the open-set calibration was fitted on: the
    # known-score measures the distance to the class prototypes whatever the method.
    prototype_weight: np.ndarray
    prototype_bias: np.ndarray
    shots: np.ndarray  # [classes] support items of each class, which the known-score allows for

    @property
    def adapted(self) -> bool:
        return self.weight is not self.prototype_weight

    @property
    def nbytes(self) -> int:
        own = self.weight.nbytes + self.bias.nbytes + self.shots.nbytes
        return own + (self.prototype_weight.nbytes + self.prototype_bias.nbytes if self.adapted else 0)


class FewShotModel:
    """Sessions for the backbone and heads of ``<repository>/<name>/<version>/``."""

    def __init__(self, name: str, version: str, directory: Path, config: ModelConfig,
                 providers: list[str], intra_op_threads: int = 0, batch_items: int = CPU_BATCH_ITEMS) -> None:
        self.name, self.version, self.directory, self.config = name, version, directory, config
        self.batch_items = batch_items
        self.input = input_adapter(config, directory)
        self.backbone = create_session(directory / config.backbone, providers, intra_op_threads)
        self.prototype_head = create_session(directory / config.prototype_head, providers, 1, memory_arena=False)
        self.finetune_head = create_session(directory / config.finetune_head, providers, 1, memory_arena=False)
        self.linear_head = create_session(directory / config.linear_head, providers, 1, memory_arena=False)
        model_card = directory / "MODEL_CARD.md"
        self.model_card = model_card.read_text() if model_card.is_file() else ""

    @property
    def providers(self) -> list[str]:
        """The execution providers ONNX Runtime actually assigned, in order."""
        return self.backbone.get_providers()

    def batches(self, count: int) -> list[slice]:
        """``count`` items as backbone calls of at most ``batch_items``, as even as possible (100 items
        are one call of 100, 130 two of 65), so a request never pays for a runt chunk."""
        return _even_parts(count, self.batch_items)

    def score_batches(self, queries: int, classes: int) -> list[slice]:
        """``queries`` scored against ``classes`` in steps of about :data:`SCORE_STEP_MACS` each."""
        return _even_parts(queries, max(1, SCORE_STEP_MACS // (classes * self.config.embedding_size)))

    def embed(self, items: np.ndarray | list[str]) -> np.ndarray:
        """Preprocessed images float32 ``[N, *input_shape]``, or texts, → embeddings ``[N, embedding_size]``."""
        return self.embed_feeds(self.input.feeds(items))

    def embed_feeds(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The backbone's feeds for N items (from :attr:`input`: images ``[N, *input_shape]``, or token
        ids and mask ``[N, L]``) → embeddings ``[N, embedding_size]``, in :meth:`batches`."""
        count = len(next(iter(feeds.values())))
        parts = [run(self.backbone, {name: value[part] for name, value in feeds.items()})[0]
                 for part in self.batches(count)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def build_head(self, support: np.ndarray, support_onehot: np.ndarray, distance: str,
                   adaptation: Adaptation | None) -> Head:
        """The prototype head, or with ``adaptation`` the fine-tuned one."""
        cosine = distance == "cosine"
        temperature = self.config.temperature[distance]
        inputs = {"support": support, "support_onehot": support_onehot, "cosine": np.array(cosine)}
        prototype_weight, prototype_bias = run(self.prototype_head, inputs)
        if adaptation is None:
            weight, bias = prototype_weight, prototype_bias
        else:
            weight, bias = run(self.finetune_head, {
                **inputs,
                "temperature": np.array(temperature, np.float32),
                "steps": np.array(adaptation.steps, np.int64),
                "learning_rate": np.array(adaptation.learning_rate, np.float32),
                "l2": np.array(adaptation.l2, np.float32),
            })
        return Head(weight, bias, distance, temperature, prototype_weight, prototype_bias, support_onehot.sum(0))

    def head(self, method: str, support: np.ndarray, support_onehot: np.ndarray, distance: str,
             adaptation: Adaptation, queries: np.ndarray | None) -> Head:
        """The head of ``method``: the prototypes, fine-tuned by ``adaptation``, or refined with the
        ``queries`` (which only the transductive method needs) for ``adaptation.steps`` rounds."""
        head = self.build_head(support, support_onehot, distance, adaptation if method == "finetune" else None)
        if method == "transductive":
            return self.refine_head(head, support, support_onehot, queries, adaptation.steps)
        return head

    def refine_head(self, head: Head, support: np.ndarray, support_onehot: np.ndarray, queries: np.ndarray,
                    rounds: int) -> Head:
        """The prototypes refined with the unlabelled queries by soft k-means (Ren et al. 2018, eq. 2),
        each query weighted by how likely it is any support class at all:

            c_k ← (Σ_i y_ik·z_i + Σ_q κ_q·p_qk·z_q) / (Σ_i y_ik + Σ_q κ_q·p_qk)

        ``y`` are the support labels, ``p_qk`` a query's current probability of class k, and ``κ_q``
        its open-set known-score against the support prototypes.  Without ``κ`` a query from outside
        the support classes pulls some class mean toward itself: on validation episodes with as many
        outside queries as known ones, 3 rounds lost 2.0 points at 5-way 1-shot, and with ``κ`` gained
        0.8 (Ren et al. mask such distractors with a learned threshold; the calibrated known-score is
        the same idea with nothing to learn).

        Each round is the two graphs the server already has: the linear graph gives ``p``, and the
        prototype graph, whose class means are ``onehotᵀ·z / Σ onehot``, takes ``κ·p`` as soft labels
        for the queries appended to the support set.  So every exported version can run it.
        """
        if rounds == 0:
            return head
        items = np.concatenate([support, queries])
        probabilities, nearest = self._linear(queries, head.weight, head.bias, head)
        known = self._known(probabilities, nearest, head)[:, None]
        for round_ in range(rounds):
            if round_:  # the last round's probabilities are left to score()
                probabilities, _ = self._linear(queries, weight, bias, head)
            weight, bias = run(self.prototype_head, {
                "support": items, "support_onehot": np.concatenate([support_onehot, known * probabilities]),
                "cosine": np.array(head.distance == "cosine"),
            })
        return Head(weight, bias, head.distance, head.temperature, head.prototype_weight, head.prototype_bias,
                    head.shots)

    def score(self, queries: np.ndarray, head: Head) -> Scores:
        """Class probabilities of query embeddings under ``head``, and how likely each is any class at all."""
        probabilities, nearest = self._linear(queries, head.weight, head.bias, head)
        if not head.adapted:
            return Scores(probabilities, self._known(probabilities, nearest, head))
        prototype_probabilities, nearest = self._linear(queries, head.prototype_weight, head.prototype_bias, head)
        return Scores(probabilities, self._known(prototype_probabilities, nearest, head))

    def _known(self, prototype_probabilities: np.ndarray, nearest: np.ndarray, head: Head) -> np.ndarray:
        """Known-scores from the prototype head's answer: the distance to the nearest class, allowing for
        that class's shot count (the most probable class is the nearest prototype)."""
        shots = head.shots[prototype_probabilities.argmax(1)]
        return self.config.open_set[head.distance].known_score(nearest, shots)

    def _linear(self, queries: np.ndarray, weight: np.ndarray, bias: np.ndarray, head: Head) -> list[np.ndarray]:
        return list(run(self.linear_head, {
            "queries": queries, "weight": weight, "bias": bias,
            "cosine": np.array(head.distance == "cosine"), "temperature": np.array(head.temperature, np.float32),
        }))


def _even_parts(count: int, most: int) -> list[slice]:
    """``count`` as the fewest slices of at most ``most``, as even as possible."""
    calls = max(1, -(-count // most))
    bounds = [round(i * count / calls) for i in range(calls + 1)]
    return [slice(start, end) for start, end in zip(bounds, bounds[1:])]
