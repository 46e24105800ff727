"""The model repository on disk: ``<root>/<model name>/<version>/``.

Layout as in Triton: each version folder holds ``config.json``
(:mod:`~metalearn_server.execution.model_config`), the ONNX graphs it names
and a ``MODEL_CARD.md``.  Versions are positive integers written in ASCII
digits without leading zeros (other folder names are ignored, with a log line);
"latest" is the highest loaded one.  A version is served only once it loads
and passes the self-check (:mod:`~metalearn_server.execution.self_check`); one
that fails is logged, counted and left out, and the rest of the repository
still serves.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from metalearn_server.errors import NotFound, excerpt
from metalearn_server.execution import self_check
from metalearn_server.execution.model import CPU_BATCH_ITEMS, FewShotModel
from metalearn_server.execution.model_config import ModelConfig

log = logging.getLogger(__name__)

#: The repository shipped inside the server package, with the default model.
BUNDLED_REPOSITORY = Path(__file__).resolve().parents[1] / "bundled_models"
#: A version folder's name: a positive integer in ASCII digits ("²" and "07" are not versions).
VERSION_NAME = re.compile(r"[1-9][0-9]*")


@dataclass(frozen=True)
class Refusal:
    """Why a version folder is not served, and the state of its files when it was refused."""

    reason: str
    files_time: float


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
    or to pass the self-check is refused (logged, kept in :attr:`refused` with
    the reason, counted through ``on_refused``) without disturbing the versions
    already serving; it is tried again once its files change.  One unreadable
    entry (a dangling link, a folder that vanishes mid-scan) is skipped, never
    the rest of the scan.  The loaded set is replaced in one assignment, so
    requests being served read either the old set or the new one, never a
    half-built one.
    """

    def __init__(self, root: Path, providers: list[str], default_model: str = "", intra_op_threads: int = 0,
                 on_refused: Callable[[str, str], None] = lambda name, version: None,
                 batch_items: int = CPU_BATCH_ITEMS) -> None:
        self.root, self.providers, self.intra_op_threads = root, providers, intra_op_threads
        self.on_refused, self.batch_items = on_refused, batch_items
        self.models: dict[str, ModelEntry] = {}
        self.refused: dict[tuple[str, str], Refusal] = {}  # (name, version) → why it is not served
        self._ignored: set[Path] = set()  # folders already logged as not versions
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
        for model_dir in _folders(self.root):
            for version_dir in _folders(model_dir):
                if VERSION_NAME.fullmatch(version_dir.name):
                    found[(model_dir.name, version_dir.name)] = version_dir
                elif version_dir not in self._ignored:
                    self._ignored.add(version_dir)
                    log.warning("ignoring %s: a version folder is named by a positive integer in ASCII digits "
                                "without leading zeros", version_dir)
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
        for key in set(self.refused) - set(on_disk):
            del self.refused[key]
        for (name, version), directory in sorted(on_disk.items()):
            refusal = self.refused.get((name, version))
            if (name, version) in loaded or (refusal and refusal.files_time == _newest_file_time(directory)):
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
            model = FewShotModel(name, directory.name, directory, config, self.providers, self.intra_op_threads,
                                 self.batch_items)
            self_check.check(model)
        except Exception as error:  # noqa: BLE001 - ConfigError, SelfCheckFailed, OSError, onnxruntime's own types
            log.error("refusing model %s version %s: %s", name, directory.name, error)
            self.refused[(name, directory.name)] = Refusal(str(error), _newest_file_time(directory))
            self.on_refused(name, directory.name)
            return None
        self.refused.pop((name, directory.name), None)
        log.info("loaded model %s version %s on %s", name, directory.name, ", ".join(model.providers))
        return model

    def get(self, name: str = "", version: str = "") -> FewShotModel:
        """The requested model version; empty name: the default model, empty version: the latest."""
        name = name or self.default_model
        entry = self.models.get(name)
        if entry is None:
            raise NotFound(f"model {excerpt(name)} is not in the repository; ListModels shows the models served "
                           f"(have: {', '.join(sorted(self.models))})")
        if not version:
            return entry.latest
        if version not in entry.versions:
            raise NotFound(f"model {name!r} has no version {excerpt(version)} (have: "
                           f"{', '.join(entry.ordered_versions())}); leave model_version empty for the latest")
        return entry.versions[version]

    def entries(self) -> list[ModelEntry]:
        return [self.models[name] for name in sorted(self.models)]


def _folders(directory: Path) -> list[Path]:
    """The sub-folders of ``directory``, skipping what cannot be read (a dangling link, a vanished folder)."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as error:
        log.warning("cannot list %s (%s); skipped in this scan", directory, error)
        return []
    return [entry for entry in entries if entry.is_dir()]  # is_dir() is False for a dangling link


def _newest_file_time(directory: Path) -> float:
    """When the folder's files last changed; a link counts by its own time, so a dangling one is no error."""
    try:
        return max((p.lstat().st_mtime for p in directory.iterdir()), default=0.0)
    except OSError:  # the folder went away meanwhile
        return 0.0
