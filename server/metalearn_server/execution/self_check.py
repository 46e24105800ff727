"""The load-time self-check: a model version is served only once its files are shown to fit together.

Each file of a version can load on its own and the version still be unservable:
a config whose input shape is not the backbone's, a backbone whose input is
named otherwise, heads swapped between files, an ``embedding_size`` that is
not what the backbone computes.  Triton refuses such a model at load; so does
this.  Before a version is served, :func:`check`

1. compares every graph's input and output names and fixed dimensions with what
   the config and the heads' contract (:mod:`metalearn.heads`) say, and
2. runs the whole pipeline on a synthetic episode (3 classes × 2 shots, 4
   queries: random images, or texts of random vocabulary words, made by the
   model's input adapter) for every method and both distances, checking the embeddings'
   shape, and that probabilities and known-scores are finite, shaped, and that
   each query's probabilities sum to 1.

A failure raises :class:`SelfCheckFailed` naming the cause; the repository
refuses the version and keeps serving the ones it had.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort

from metalearn_server.execution.model import FewShotModel
from metalearn_server.execution.model_config import DISTANCES, METHODS

#: What each head graph takes and gives, by name (the contract of metalearn.heads / metalearn.export).
HEAD_SIGNATURES = {
    "prototype_head": (("support", "support_onehot", "cosine"), ("weight", "bias")),
    "finetune_head": (("support", "support_onehot", "cosine", "temperature", "steps", "learning_rate", "l2"),
                      ("weight", "bias")),
    "linear_head": (("queries", "weight", "bias", "cosine", "temperature"), ("probabilities", "distance")),
}
#: Inputs of the heads whose last dimension is the embedding's.
EMBEDDING_INPUTS = ("support", "queries", "weight")
WAYS, SHOTS, QUERIES = 3, 2, 4


class SelfCheckFailed(Exception):
    """A version whose files load but do not fit together."""


def check(model: FewShotModel) -> None:
    _check_signatures(model)
    _check_pipeline(model)


def _names(args: list[ort.NodeArg]) -> tuple[str, ...]:
    return tuple(arg.name for arg in args)


def _check_signatures(model: FewShotModel) -> None:
    config = model.config
    backbone_inputs = model.backbone.get_inputs()
    if config.text is not None:
        if sorted(_names(backbone_inputs)) != sorted(config.text.feeds):
            raise SelfCheckFailed(f"the backbone takes the inputs {list(_names(backbone_inputs))}; "
                                  f"config.json's input.feeds says {list(config.text.feeds)}")
    elif _names(backbone_inputs) != (config.input_name,):
        raise SelfCheckFailed(f"the backbone takes the inputs {list(_names(backbone_inputs))}; "
                              f"config.json's input.name says {config.input_name!r}")
    else:
        expected = [None, *config.input_shape]
        given = backbone_inputs[0].shape
        if len(given) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(given[1:], expected[1:])):
            raise SelfCheckFailed(f"the backbone takes items of shape {given}; config.json's input.shape says "
                                  f"[N, {', '.join(map(str, config.input_shape))}]")
    for attribute, (inputs, outputs) in HEAD_SIGNATURES.items():
        session = getattr(model, attribute)
        found = (_names(session.get_inputs()), _names(session.get_outputs()))
        if found != (inputs, outputs):
            raise SelfCheckFailed(f"{getattr(config, attribute)} is not a "
                                  f"{attribute.replace('_', ' ')} graph: it takes {list(found[0])} and gives "
                                  f"{list(found[1])}, where {list(inputs)} → {list(outputs)} is expected")
        for arg in session.get_inputs():
            width = arg.shape[-1] if arg.name in EMBEDDING_INPUTS else None
            if isinstance(width, int) and width != config.embedding_size:
                raise SelfCheckFailed(f"the {attribute.replace('_', ' ')}'s input {arg.name} has {width} values per "
                                      f"item; config.json's embedding_size says {config.embedding_size}")


def _check_pipeline(model: FewShotModel) -> None:
    config = model.config
    count = WAYS * SHOTS + QUERIES
    feeds = model.input.synthetic(count, np.random.default_rng(0))
    try:
        embeddings = model.embed_feeds(feeds)
    except Exception as error:  # noqa: BLE001 - whatever ONNX Runtime says of a mismatched graph
        raise SelfCheckFailed(f"the backbone fails on synthetic {config.kind} items as the config describes them: "
                              f"{error}") from None
    if embeddings.shape != (count, config.embedding_size):
        raise SelfCheckFailed(f"the backbone gives embeddings of shape {list(embeddings.shape[1:])} per item; "
                              f"config.json's embedding_size says {config.embedding_size}")
    if not np.isfinite(embeddings).all():
        raise SelfCheckFailed("the backbone gives non-finite embeddings for ordinary inputs")
    support, queries = embeddings[: WAYS * SHOTS], embeddings[WAYS * SHOTS :]
    onehot = np.eye(WAYS, dtype=np.float32)[np.arange(WAYS * SHOTS) % WAYS]
    for method in METHODS:
        for distance in DISTANCES:
            where = f"method {method}, distance {distance}"
            try:
                head = model.head(method, support, onehot, distance, config.method_defaults(method), queries)
                scores = model.score(queries, head)
            except Exception as error:  # noqa: BLE001 - a head graph that cannot take its inputs
                raise SelfCheckFailed(f"{where}: the heads fail on a synthetic episode: {error}") from None
            probabilities, known = scores.probabilities, scores.known
            if probabilities.shape != (QUERIES, WAYS) or known.shape != (QUERIES,):
                raise SelfCheckFailed(f"{where}: scores of shape {list(probabilities.shape)} and known-scores of "
                                      f"shape {list(known.shape)} for {QUERIES} queries of {WAYS} classes")
            if not (np.isfinite(probabilities).all() and np.isfinite(known).all()):
                raise SelfCheckFailed(f"{where}: non-finite scores on a synthetic episode")
            if not np.allclose(probabilities.sum(1), 1.0, atol=1e-3) or not ((known >= 0) & (known <= 1)).all():
                raise SelfCheckFailed(f"{where}: probabilities that do not sum to 1, or known-scores outside [0, 1]")
