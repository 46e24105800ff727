"""Refit the open-set calibration of exported model versions from their own files.

    python -m metalearn.recalibrate --repository server/metalearn_server/bundled_models --name omniglot-conv4
    python -m metalearn.recalibrate --repository server/metalearn_server/bundled_models --name text-minilm

For every version (or those of ``--versions``), embeds the validation data
with the version's served ``backbone.onnx`` (ONNX Runtime, as the server does;
each item once), fits the known-score of :mod:`metalearn.calibration` for both
distances, and rewrites ``open_set`` in its ``config.json`` and the matching
line of its ``MODEL_CARD.md``.  Nothing else in the version changes, so a
version whose checkpoint is gone can still get a known-score that allows for
the shot count.  An image model's validation data are the alphabets training
held out: ``--val-alphabets`` and ``--seed`` must be the run's (the model
card's hyper-parameters; 5 and 0 for every bundled version).  A text model's
are the ``val`` requests of CLINC150's validation domains, with that split's
out-of-scope requests (``oos_val``) as the outsiders, as its export used them;
the test domains and ``oos_test`` are never read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from metalearn import calibration, clinc, data
from metalearn.export import OPEN_SET_LINE, open_set_line
from metalearn.train import TrainConfig


def recalibrate(directory: Path, val_data: data.FewShotImages | clinc.FewShotTexts) -> dict:
    """Refit ``directory``'s open-set calibration on validation images or texts; return the new
    ``open_set`` section."""
    from metalearn_server.execution.model import FewShotModel
    from metalearn_server.execution.model_config import ModelConfig

    config_path = directory / "config.json"
    served = FewShotModel(directory.parent.name, directory.name, directory, ModelConfig.load(config_path),
                          ["CPUExecutionProvider"])
    if isinstance(val_data, clinc.FewShotTexts):
        texts, _ = val_data.flat()
        embedded = served.embed(texts + list(val_data.outsiders))
        open_set = calibration.fit_open_sets(val_data.by_class(embedded[: len(texts)]), np.array(val_data.domains),
                                             outsiders=embedded[len(texts):])
    else:
        open_set = calibration.fit_open_sets(calibration.embed_classes(served.embed, val_data), val_data.alphabets)
    raw = json.loads(config_path.read_text())
    raw["open_set"] = open_set
    config_path.write_text(json.dumps(raw, indent=2) + "\n")
    ModelConfig.load(config_path)  # what was written is servable
    card_path = directory / "MODEL_CARD.md"
    if card_path.is_file():
        lines = card_path.read_text().split("\n")
        card_path.write_text("\n".join(open_set_line(open_set) if line.startswith(OPEN_SET_LINE) else line
                                       for line in lines))
    return open_set


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
    args = parser.parse_args(argv)
    model_dir = args.repository / args.name
    versions = args.versions.split(",") if args.versions else sorted(
        (p.name for p in model_dir.iterdir() if p.name.isdigit() and (p / "config.json").is_file()), key=int)
    loaded: dict[str, data.FewShotImages | clinc.FewShotTexts] = {}  # by kind of item, each loaded once
    for version in versions:
        kind = ModelConfig.load(model_dir / version / "config.json").kind
        if kind not in loaded:
            loaded[kind] = validation_data(kind, args)
        print(version, json.dumps(recalibrate(model_dir / version, loaded[kind])), flush=True)


def validation_data(kind: str, args: argparse.Namespace) -> data.FewShotImages | clinc.FewShotTexts:
    """The validation data of a model whose items are ``kind``."""
    if kind == "text":
        return clinc.load("val", args.data)
    _, val_data = data.split_by_alphabet(data.load_split("background", args.data), args.val_alphabets, args.seed)
    return val_data


if __name__ == "__main__":
    main()
