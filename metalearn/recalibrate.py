"""Refit the open-set calibration (and, for a text model, the adaptation defaults) of exported model
versions from their own files.

    python -m metalearn.recalibrate --repository server/metalearn_server/bundled_models --name omniglot-conv4
    python -m metalearn.recalibrate --repository server/metalearn_server/bundled_models --name text-minilm \\
        --adaptation

For every version (or those of ``--versions``), embeds the validation data
with the version's served ``backbone.onnx`` (ONNX Runtime, as the server does;
each item once), fits the known-score of :mod:`metalearn.calibration` for both
distances, and rewrites ``open_set`` in its ``config.json`` and the served
defaults of its ``MODEL_CARD.md``.  Nothing else in the version changes, so a
version whose checkpoint is gone can still get a known-score that allows for
the shot count.  An image model's validation data are the alphabets training
held out: ``--val-alphabets`` and ``--seed`` must be the run's (the model
card's hyper-parameters; 5 and 0 for every bundled version).  A text model's
are the ``val`` requests of CLINC150's validation domains, with that split's
out-of-scope requests (``oos_val``) as the outsiders, as its export used them;
the test domains and ``oos_test`` are never read.

``--adaptation`` (text models) also refits ``defaults.adaptation``, the steps
and learning rate of fast adaptation, on the validation episodes its export
fits them on (:func:`metalearn.export_text.fit_adaptation`), and prints the
grid's validation accuracies.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from metalearn import calibration, clinc, data, export_text
from metalearn.evaluate_text import COLUMNS, column_name
from metalearn.export import served_defaults
from metalearn.train import TrainConfig


def recalibrate(directory: Path, val_data: data.FewShotImages | clinc.FewShotTexts,
                adaptation: bool = False) -> dict:
    """Refit ``directory``'s open-set calibration on validation images or texts, and with ``adaptation``
    (texts only) its adaptation defaults; return the refitted sections of the config."""
    from metalearn_server.execution.model import FewShotModel
    from metalearn_server.execution.model_config import ModelConfig

    config_path = directory / "config.json"
    raw = json.loads(config_path.read_text())
    served = FewShotModel(directory.parent.name, directory.name, directory, ModelConfig.load(config_path),
                          ["CPUExecutionProvider"])
    refitted = {}
    if isinstance(val_data, clinc.FewShotTexts):
        texts, _ = val_data.flat()
        embedded = served.embed(texts + list(val_data.outsiders))
        refitted["open_set"] = calibration.fit_open_sets(val_data.by_class(embedded[: len(texts)]),
                                                         np.array(val_data.domains), outsiders=embedded[len(texts):])
        if adaptation:
            refitted["adaptation"] = refit_adaptation(embedded[: len(texts)], val_data, raw["temperature"]["euclidean"])
    else:
        refitted["open_set"] = calibration.fit_open_sets(calibration.embed_classes(served.embed, val_data),
                                                         val_data.alphabets)
    before = "\n".join(served_defaults(raw))
    raw["open_set"] = refitted["open_set"]
    raw["defaults"]["adaptation"] = refitted.get("adaptation", raw["defaults"]["adaptation"])
    config_path.write_text(json.dumps(raw, indent=2) + "\n")
    ModelConfig.load(config_path)  # what was written is servable
    card_path = directory / "MODEL_CARD.md"
    if card_path.is_file():
        card = card_path.read_text()
        if before in card:
            card_path.write_text(card.replace(before, "\n".join(served_defaults(raw))))
        else:
            print(f"{card_path}: no served-defaults section as its exporter wrote it; left unchanged", file=sys.stderr)
    return refitted


def refit_adaptation(embeddings: np.ndarray, val_data: clinc.FewShotTexts, temperature: float) -> dict:
    """A text model's ``defaults.adaptation`` from its validation embeddings; prints the grid it chose from."""
    shapes = export_text.validation_shapes(embeddings, val_data)
    fitted, grid = export_text.fit_adaptation(shapes, temperature)
    def percent(accuracies: list[float]) -> str:
        return " / ".join(f"{100 * accuracy:.2f}" for accuracy in accuracies)

    prototypes = [calibration.adaptation_accuracy(episodes, temperature, 0, 1.0, 0.0) for episodes in shapes]
    print(f"validation accuracy after adaptation ({' / '.join(column_name(*column) for column in COLUMNS)}; "
          f"prototypes: {percent(prototypes)}):", file=sys.stderr)
    for (steps, rate), accuracies in grid.items():
        mean = 100 * np.mean(accuracies)
        print(f"  steps {steps:3d} learning rate {rate:6g}: {percent(accuracies)}  mean {mean:.2f}", file=sys.stderr)
    return fitted


def main(argv: list[str] | None = None) -> None:
    from metalearn_server.execution.model_config import ModelConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, required=True, help="model repository folder")
    parser.add_argument("--name", default="omniglot-conv4")
    parser.add_argument("--versions", help="comma-separated (default: every version)")
    parser.add_argument("--data", help="Omniglot folder (default: $METALEARN_DATA or ../shared/data/omniglot), or "
                        "for a text model CLINC150's (default: $METALEARN_CLINC_DATA or ../shared/data/clinc150)")
    parser.add_argument("--val-alphabets", type=int, default=TrainConfig.val_alphabets)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--adaptation", action="store_true",
                        help="also refit a text model's defaults.adaptation (fast-adaptation steps and learning rate)")
    args = parser.parse_args(argv)
    model_dir = args.repository / args.name
    versions = args.versions.split(",") if args.versions else sorted(
        (p.name for p in model_dir.iterdir() if p.name.isdigit() and (p / "config.json").is_file()), key=int)
    loaded: dict[str, data.FewShotImages | clinc.FewShotTexts] = {}  # by kind of item, each loaded once
    for version in versions:
        kind = ModelConfig.load(model_dir / version / "config.json").kind
        if args.adaptation and kind != "text":
            parser.error(f"--adaptation refits text models; {args.name} version {version} is of {kind}s, whose "
                         "adaptation defaults metalearn.export fits from the checkpoint")
        if kind not in loaded:
            loaded[kind] = validation_data(kind, args)
        print(version, json.dumps(recalibrate(model_dir / version, loaded[kind], args.adaptation)), flush=True)


def validation_data(kind: str, args: argparse.Namespace) -> data.FewShotImages | clinc.FewShotTexts:
    """The validation data of a model whose items are ``kind``."""
    if kind == "text":
        return clinc.load("val", args.data)
    _, val_data = data.split_by_alphabet(data.load_split("background", args.data), args.val_alphabets, args.seed)
    return val_data


if __name__ == "__main__":
    main()
