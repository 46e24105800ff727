"""Export a trained backbone and its heads into a model repository.

    python -m metalearn.export --checkpoint runs/omniglot-conv4/best.pt \\
        --repository server/metalearn_server/bundled_models --name omniglot-conv4

writes ``<repository>/<name>/<version>/`` (the next free integer version
unless ``--version`` is given) holding

* ``backbone.onnx``: images ``[N, 1, 28, 28]`` float32 → embeddings ``[N, D]``;
* ``prototype_head.onnx``, ``finetune_head.onnx`` and ``linear_head.onnx``:
  the heads of :mod:`metalearn.heads`;
* ``config.json``: input spec, preprocessing, temperatures, open-set
  calibration and the default method, distance and adaptation, which the
  server reads;
* ``MODEL_CARD.md``: how the model was trained and on what.

``--test-time-rotations`` exports the backbone wrapped in
:class:`~metalearn.backbones.RotationEnsemble`: four times the compute per
image for fewer errors (the model card and README give the trade).

Temperatures, the adaptation learning rate and the open-set calibration are
fitted on the same validation alphabets training used for model selection.
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from metalearn import calibration, data
from metalearn.backbones import BACKBONES, RotationEnsemble
from metalearn.heads import FineTuneHead, LinearHead, PrototypeHead

OPSET = 17
DEFAULT_STEPS = 10
DEFAULT_L2 = 0.0
OPEN_SET_LINE = "- open-set calibration"


def next_version(model_dir: Path) -> str:
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return str(max(versions, default=0) + 1)


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str],
                dynamic_axes: dict) -> None:
    """TorchScript-based export: the only exporter that turns a run-time loop count into an ONNX Loop."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter announces its deprecation
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def script(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """TorchScript keeps the heads' step loop a loop (the exporter then writes ONNX ``Loop``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


def export_backbone(backbone: torch.nn.Module, path: Path) -> int:
    """Write the backbone; return its embedding size."""
    backbone.eval()
    example = torch.zeros(2, 1, 28, 28)
    export_onnx(backbone, (example,), path, ["images"], ["embeddings"],
                {"images": {0: "items"}, "embeddings": {0: "items"}})
    return int(backbone(example).shape[1])


def export_heads(directory: Path, embedding_size: int) -> None:
    """The three head graphs; sizes other than the embedding's are dynamic."""
    support, onehot = torch.randn(6, embedding_size), torch.eye(3).repeat(2, 1)
    cosine, temperature = torch.tensor(False), torch.tensor(1.0)
    support_axes = {"support": {0: "support_items"}, "support_onehot": {0: "support_items", 1: "classes"},
                    "weight": {0: "classes"}, "bias": {0: "classes"}}
    export_onnx(script(PrototypeHead()), (support, onehot, cosine),
                directory / "prototype_head.onnx", ["support", "support_onehot", "cosine"], ["weight", "bias"],
                support_axes)
    export_onnx(script(FineTuneHead()),
                (support, onehot, cosine, temperature, torch.tensor(2), torch.tensor(0.1), torch.tensor(0.0)),
                directory / "finetune_head.onnx",
                ["support", "support_onehot", "cosine", "temperature", "steps", "learning_rate", "l2"],
                ["weight", "bias"], support_axes)
    weight, bias = PrototypeHead()(support, onehot, cosine)
    export_onnx(script(LinearHead()), (torch.randn(4, embedding_size), weight, bias, cosine, temperature),
                directory / "linear_head.onnx", ["queries", "weight", "bias", "cosine", "temperature"],
                ["probabilities", "distance"],
                {"queries": {0: "query_items"}, "weight": {0: "classes"}, "bias": {0: "classes"},
                 "probabilities": {0: "query_items", 1: "classes"}, "distance": {0: "query_items"}})


def served_defaults(config: dict) -> list[str]:
    """The model card's section on what the version serves by default (every exporter's card has it;
    :mod:`metalearn.recalibrate` rewrites it after a refit)."""
    return [
        "## Served defaults (fitted on validation episodes)",
        f"- temperatures: `{json.dumps(config['temperature'])}`",
        open_set_line(config["open_set"]),
        f"- default method `{config['defaults']['method']}`, distance `{config['defaults']['distance']}`,",
        f"  adaptation `{json.dumps(config['defaults']['adaptation'])}`",
        "",
    ]


def open_set_line(open_set: dict) -> str:
    """The model card's line on the open-set calibration."""
    return (f"{OPEN_SET_LINE} (known-score midpoint, width, shot scale, default threshold): "
            f"`{json.dumps(open_set)}`")


def model_card(name: str, version: str, checkpoint: dict, config: dict, data_sha: str) -> str:
    summary = checkpoint.get("summary", {})
    train_config = checkpoint["config"]
    lines = [
        f"# {name} version {version}",
        "",
        f"Few-shot embedding model for handwritten characters: a Conv-4 backbone (`{train_config['backbone']}`,",
        f"{config['embedding_size']}-d embeddings) meta-trained with {train_config['algorithm']} on Omniglot",
        "`background` (28×28, rotations as extra classes).",
        *(["Served as a test-time rotation ensemble: each image is embedded upright and at 90°, 180° and 270°",
           "and the four embeddings are concatenated, so prototype logits sum the four views' logits",
           "(four backbone passes per image)."] if config["architecture"]["test_time_rotations"] else []),
        "It embeds 28×28 grayscale images (strokes light on dark after preprocessing); the service",
        "classifies queries against any support set by prototypes, by fast adaptation of a linear head, or",
        "(transductive) by prototypes refined with the request's own queries.",
        "",
        "## Training",
        f"- data: `omniglot28_background.npz`, sha256 `{data_sha}`; {train_config['val_alphabets']} alphabets",
        "  held out for validation; `evaluation` never read in training.",
        f"- hyper-parameters: `{json.dumps(train_config, sort_keys=True)}`",
        f"- best validation 5-way 1-shot accuracy: {summary.get('best_val_5way_1shot', float('nan')):.4f}",
        f"- training time: {summary.get('train_seconds', float('nan')):.0f} s on "
        f"{summary.get('threads', 'an unrecorded number of')} CPU threads, {summary.get('precision', 'fp32')} "
        "backbone arithmetic",
        "",
        *served_defaults(config),
    ]
    return "\n".join(lines)


def export(checkpoint_path: Path, repository: Path, name: str, version: str | None = None,
           data_directory: str | None = None, rotations: bool = False) -> Path:
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    train_config = checkpoint["config"]
    backbone = BACKBONES[train_config["backbone"]]()
    backbone.load_state_dict(checkpoint["backbone"])
    if rotations:
        backbone = RotationEnsemble(backbone)
    backbone.eval()

    directory = repository / name / (version or next_version(repository / name))
    directory.mkdir(parents=True, exist_ok=False)
    embedding_size = export_backbone(backbone, directory / "backbone.onnx")
    export_heads(directory, embedding_size)

    _, val_data = data.split_by_alphabet(data.load_split("background", data_directory),
                                         train_config["val_alphabets"], train_config["seed"])
    one_shot = calibration.embedded_episodes(backbone, val_data, 200, shots=1, seed=1)
    five_shot = calibration.embedded_episodes(backbone, val_data, 200, shots=5, seed=2)
    temperature = {
        "euclidean": calibration.fit_temperature(one_shot + five_shot, cosine=False),
        "cosine": calibration.fit_temperature(one_shot + five_shot, cosine=True),
    }
    adaptation, _ = calibration.fit_adaptation([five_shot], temperature["euclidean"], (DEFAULT_STEPS,), DEFAULT_L2)
    with torch.no_grad():
        val_embeddings = calibration.embed_classes(lambda x: backbone(torch.from_numpy(x)).numpy(), val_data)
    open_set = calibration.fit_open_sets(val_embeddings, val_data.alphabets)
    config = {
        "backbone": "backbone.onnx",
        "heads": {"prototype": "prototype_head.onnx", "finetune": "finetune_head.onnx", "linear": "linear_head.onnx"},
        "input": {"name": "images", "dtype": "float32", "shape": [1, 28, 28]},
        "embedding_size": embedding_size,
        # Informational (the server needs only the ONNX graph): how the backbone computes, for tools such as
        # the benchmark that rebuild the same computation in eager PyTorch.
        "architecture": {"backbone": train_config["backbone"], "test_time_rotations": rotations},
        "preprocessing": {
            "color_mode": "L", "width": 28, "height": 28, "invert": True,
            "mean": data.PIXEL_MEAN, "std": data.PIXEL_STD,
        },
        "temperature": temperature,
        "open_set": open_set,
        "defaults": {
            "method": "prototype",
            "distance": "euclidean",
            "adaptation": adaptation,
        },
    }
    return write_version(directory, config, model_card(name, directory.name, checkpoint, config,
                                                       data.file_sha256("background", data_directory)))


def write_version(directory: Path, config: dict, card: str) -> Path:
    """A version folder's config.json and MODEL_CARD.md, written last: the graphs are in place by then."""
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "MODEL_CARD.md").write_text(card)
    return directory


def exporter_arguments(description: str, name: str, data: str) -> argparse.ArgumentParser:
    """The options every exporter takes: the checkpoint, where the new version goes, and the training data."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--name", default=name)
    parser.add_argument("--version", help="default: one above the highest version present")
    parser.add_argument("--data", help=data)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = exporter_arguments(__doc__, "omniglot-conv4", "Omniglot folder (default: $METALEARN_DATA or "
                                "../shared/data/omniglot)")
    parser.add_argument("--test-time-rotations", action="store_true",
                        help="serve the backbone as a rotation ensemble (4 passes per image, fewer errors)")
    args = parser.parse_args(argv)
    print(export(args.checkpoint, args.repository, args.name, args.version, args.data, args.test_time_rotations))


if __name__ == "__main__":
    main()
