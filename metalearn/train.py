"""Meta-train a backbone on Omniglot ``background``.

    python -m metalearn.train --out runs/omniglot-conv4

Every ``--val-every`` episodes the backbone is scored on 5-way episodes from
alphabets held out of ``background``; the best checkpoint is kept in
``best.pt`` and the latest in ``last.pt`` (``--resume`` continues from it).
Calibration of the served scores happens at export
(:mod:`metalearn.calibration`).
``evaluation`` is never read here.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metalearn.algorithms import protonet
from metalearn.backbones import BACKBONES
from metalearn.data import FewShotImages, load_split, split_by_alphabet, to_model_input
from metalearn.calibration import embedded_episodes
from metalearn.episodes import Episode, EpisodeSampler


@dataclass
class TrainConfig:
    """Everything that decides a training run; written into the model card."""

    algorithm: str = "protonet"
    backbone: str = "conv4"
    ways: int = 60
    shots: int = 1
    queries: int = 5
    episodes: int = 4000
    lr: float = 1e-3
    lr_halve_every: int = 1500
    val_every: int = 500
    val_episodes: int = 300
    val_alphabets: int = 5
    seed: int = 0
    threads: int = 0
    data: str | None = None


def embed_episode(backbone: torch.nn.Module, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed support and queries in one forward pass (batch norm sees the whole episode)."""
    images = torch.from_numpy(to_model_input(np.concatenate([episode.support, episode.query])))
    embeddings = backbone(images)
    return embeddings[: len(episode.support)], embeddings[len(episode.support) :]


def episode_loss(backbone: torch.nn.Module, episode: Episode, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    support, queries = embed_episode(backbone, episode)
    return protonet.loss(
        support, torch.from_numpy(episode.support_labels), queries,
        torch.from_numpy(episode.query_labels), len(episode.classes), temperature,
    )


@torch.no_grad()
def validation_accuracy(backbone: torch.nn.Module, data: FewShotImages, episodes: int, seed: int) -> float:
    """Mean query accuracy of prototype inference on 5-way 1-shot validation episodes."""
    correct = total = 0
    for support, onehot, queries, labels in embedded_episodes(backbone, data, episodes, shots=1, seed=seed):
        protos = (onehot.T @ support) / onehot.sum(0).unsqueeze(1)
        correct += int((protonet.logits(queries, protos).argmax(-1) == labels).sum())
        total += len(labels)
    backbone.train()
    return correct / total


def train(config: TrainConfig, out: Path, resume: bool = False) -> dict:
    """Run training; return a summary (validation accuracy, temperature, time)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    train_data, val_data = split_by_alphabet(load_split("background", config.data), config.val_alphabets, config.seed)
    train_data = train_data.with_rotations()
    out.mkdir(parents=True, exist_ok=True)

    backbone = BACKBONES[config.backbone]()
    optimiser = torch.optim.Adam(backbone.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.lr_halve_every, gamma=0.5)
    state = {"episode": 0, "best_accuracy": 0.0, "seconds": 0.0, "history": []}
    if resume and (out / "last.pt").exists():
        checkpoint = torch.load(out / "last.pt", weights_only=False)
        backbone.load_state_dict(checkpoint["backbone"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
    # A fresh seed per resumed start keeps episodes from repeating after a resume.
    sampler = EpisodeSampler(train_data, config.ways, config.shots, config.queries, seed=config.seed + state["episode"])

    started = time.monotonic() - state["seconds"]
    progress = tqdm(range(state["episode"], config.episodes), initial=state["episode"], total=config.episodes, desc="train")
    for episode_index in progress:
        loss, accuracy = episode_loss(backbone, sampler.sample())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        scheduler.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", acc=f"{accuracy.item():.3f}")
        done = episode_index + 1
        if done % config.val_every == 0 or done == config.episodes:
            val_accuracy = validation_accuracy(backbone, val_data, config.val_episodes, seed=config.seed)
            state["history"].append({"episode": done, "val_5way_1shot": val_accuracy})
            progress.write(f"episode {done}: validation 5-way 1-shot accuracy {val_accuracy:.4f}")
            state["episode"], state["seconds"] = done, time.monotonic() - started
            if val_accuracy > state["best_accuracy"]:
                state["best_accuracy"] = val_accuracy
                torch.save({"backbone": backbone.state_dict(), "config": asdict(config)}, out / "best.pt")
            torch.save({"backbone": backbone.state_dict(), "optimiser": optimiser.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": state, "config": asdict(config)}, out / "last.pt")

    best = torch.load(out / "best.pt", weights_only=False)
    summary = {
        "train_config": asdict(config),
        "best_val_5way_1shot": state["best_accuracy"],
        "train_seconds": round(state["seconds"], 1),
        "history": state["history"],
    }
    torch.save({**best, "summary": summary}, out / "best.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and summary.json")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    for field, default in asdict(TrainConfig()).items():
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default)
    args = vars(parser.parse_args(argv))
    out, resume = args.pop("out"), args.pop("resume")
    summary = train(TrainConfig(**args), out, resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
