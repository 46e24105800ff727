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
from typing import Callable

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
    """Every model version under ``root``, with ONNX Runtime sessions on ``providers``.

    :meth:`refresh` brings the loaded set in line with the disk: new version
    folders are loaded, removed ones unloaded, and a folder that fails to load
    is refused (logged, counted through ``on_refused``) without disturbing the
    versions already serving; it is tried again once its files change.  The
    loaded set is replaced in one assignment, so requests being served read
    either the old set or the new one, never a half-built one.
    """

    def __init__(self, root: Path, providers: list[str], default_model: str = "", intra_op_threads: int = 0,
                 on_refused: Callable[[str, str], None] = lambda name, version: None) -> None:
        self.root, self.providers, self.intra_op_threads = root, providers, intra_op_threads
        self.on_refused = on_refused
        self.models: dict[str, ModelEntry] = {}
        self._refused: dict[tuple[str, str], float] = {}  # folder → newest file time when it was refused
        if not root.is_dir():
            raise FileNotFoundError(f"model repository {root} is not a folder")
        self.refresh()
        if not self.models:
            raise FileNotFoundError(f"model repository {root} holds no loadable model")
        if default_model and default_model not in self.models:
            raise FileNotFoundError(f"default model {default_model!r} is not in {root} (have: {', '.join(self.models)})")
        self.default_model = default_model or sorted(self.models)[0]

    def _on_disk(self) -> dict[tuple[str, str], Path]:
        found = {}
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
                if version_dir.name.isdigit() and int(version_dir.name) > 0:
                    found[(model_dir.name, version_dir.name)] = version_dir
        return found

    def refresh(self) -> bool:
        """Load new versions, unload removed ones; return whether the loaded set changed."""
        on_disk = self._on_disk()
        loaded = {(name, version) for name, entry in self.models.items() for version in entry.versions}
        models = {name: ModelEntry(name, dict(entry.versions)) for name, entry in self.models.items()}
        changed = False
        for name, version in sorted(loaded - set(on_disk)):
            del models[name].versions[version]
            log.info("unloaded model %s version %s: its folder is gone", name, version)
            changed = True
        for (name, version), directory in sorted(on_disk.items()):
            if (name, version) in loaded or self._refused.get((name, version)) == _newest_file_time(directory):
                continue
            model = self._load(name, directory)
            if model is not None:
                models.setdefault(name, ModelEntry(name)).versions[version] = model
                changed = True
        self.models = {name: entry for name, entry in models.items() if entry.versions}
        return changed

    def _load(self, name: str, directory: Path) -> FewShotModel | None:
        try:
            config = ModelConfig.load(directory / "config.json")
            model = FewShotModel(name, directory.name, directory, config, self.providers, self.intra_op_threads)
        except Exception as error:  # noqa: BLE001 - ConfigError, OSError, and onnxruntime's own Exception types
            log.error("refusing model %s version %s: %s", name, directory.name, error)
            self._refused[(name, directory.name)] = _newest_file_time(directory)
            self.on_refused(name, directory.name)
            return None
        self._refused.pop((name, directory.name), None)
        log.info("loaded model %s version %s on %s", name, directory.name, ", ".join(model.providers))
        return model

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


def _newest_file_time(directory: Path) -> float:
    return max((p.stat().st_mtime for p in directory.iterdir()), default=0.0)
