"""The model repository on disk: ``<root>/<model name>/<version>/``.

Layout as in Triton: each version folder holds ``config.json``
(:mod:`~metalearn_server.execution.model_config`), the ONNX graphs it names
and a ``MODEL_CARD.md``.  Versions are positive integers; "latest" is the
highest loaded one.  A version that fails to load is logged and left out, and
the rest of the repository still serves.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from metalearn_server.errors import NotFound
from metalearn_server.execution.model import FewShotModel
from metalearn_server.execution.model_config import ModelConfig

log = logging.getLogger(__name__)

#: The repository shipped inside the server package, with the default model.
BUNDLED_REPOSITORY = Path(__file__).resolve().parents[1] / "bundled_models"


@dataclass
class ModelEntry:
    """All loaded versions of one model, keyed by version string."""

    name: str
    versions: dict[str, FewShotModel] = field(default_factory=dict)

    def ordered_versions(self) -> list[str]:
        return sorted(self.versions, key=int)

    @property
    def latest(self) -> FewShotModel:
        return self.versions[self.ordered_versions()[-1]]


class ModelRepository:
    """Loads every model version under ``root`` once, with ONNX Runtime sessions on ``providers``."""

    def __init__(self, root: Path, providers: list[str], default_model: str = "", intra_op_threads: int = 0) -> None:
        self.root, self.providers, self.intra_op_threads = root, providers, intra_op_threads
        self.models: dict[str, ModelEntry] = {}
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
        for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                self._load(model_dir.name, version_dir)
        if not self.models:
            raise FileNotFoundError(f"model repository {root} holds no loadable model")
        if default_model and default_model not in self.models:
            raise FileNotFoundError(f"default model {default_model!r} is not in {root} (have: {', '.join(self.models)})")
        self.default_model = default_model or sorted(self.models)[0]

    def _load(self, name: str, directory: Path) -> None:
        if not directory.name.isdigit() or int(directory.name) < 1:
            log.warning("skipping %s: a version folder is named by a positive integer", directory)
            return
        try:
            config = ModelConfig.load(directory / "config.json")
            model = FewShotModel(name, directory.name, directory, config, self.providers, self.intra_op_threads)
        except Exception as error:  # noqa: BLE001 - ConfigError, OSError, and onnxruntime's own Exception types
            log.error("refusing model %s version %s: %s", name, directory.name, error)
            return
        self.models.setdefault(name, ModelEntry(name)).versions[directory.name] = model
        log.info("loaded model %s version %s on %s", name, directory.name, ", ".join(model.providers))

    def get(self, name: str = "", version: str = "") -> FewShotModel:
        """The requested model version; empty name: the default model, empty version: the latest."""
        name = name or self.default_model
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {name!r} is not in the repository; ListModels shows the models served "
                           f"(have: {', '.join(sorted(self.models))})")
        if not version:
            return entry.latest
        if version not in entry.versions:
            raise NotFound(f"model {name!r} has no version {version!r} (have: {', '.join(entry.ordered_versions())}); "
                           "leave model_version empty for the latest")
        return entry.versions[version]

    def entries(self) -> list[ModelEntry]:
        return [self.models[name] for name in sorted(self.models)]
