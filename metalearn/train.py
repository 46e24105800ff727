"""Meta-train a backbone on Omniglot ``background``.

    python -m metalearn.train --out runs/omniglot-conv4 [--algorithm protonet|proto-maml|anil|maml]

Each algorithm is a module of :mod:`metalearn.algorithms`; this file only
feeds it episodes.  Every ``--val-every`` episodes the backbone is scored by
prototype inference (what the service runs by default) on 5-way 1-shot
episodes from alphabets held out of ``background``; the best checkpoint is kept in
``best.pt`` and the latest in ``last.pt`` (``--resume`` continues from it).
Calibration of the served scores happens at export
(:mod:`metalearn.calibration`).
``evaluation`` is never read here.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from metalearn.algorithms import anil, maml, proto_maml, protonet
from metalearn.augmentation import random_shift
from metalearn.backbones import BACKBONES
from metalearn.calibration import embedded_episodes
from metalearn.data import FewShotImages, load_split, split_by_alphabet, to_model_input
from metalearn.episodes import Episode, EpisodeSampler


ALGORITHMS = ("protonet", "proto-maml", "anil", "maml")
LR_SCHEDULES = ("cosine", "step")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Everything that decides a training run; written into the model card."""

    algorithm: str = "protonet"  # protonet, proto-maml, anil or maml
    backbone: str = "conv4-3x3"  # a key of metalearn.backbones.BACKBONES
    # 120-way 1-shot with 2 queries: the same 360 images per episode as Snell et al.'s 60-way 5-query
    # episodes, but twice the classes to tell apart (measured better on validation, see the README).
    ways: int = 120
    shots: int = 1
    queries: int = 2
    episodes: int = 12000  # ~30 min on 2 cores with bf16 (version 5); 6,500 in fp32 took 42.5 (version 4)
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES
    lr_halve_every: int = 2000  # the step schedule only
    inner_steps: int = 5  # proto-maml, anil, maml
    inner_lr: float = 0.1
    first_order: bool = False  # anil, maml (proto-maml is first order by definition)
    shift: int = 2  # random translation of training images, in pixels (metalearn.augmentation)
    val_every: int = 1000
    val_episodes: int = 300
    val_alphabets: int = 5
    seed: int = 0
    threads: int = 0
    precision: str = "auto"  # one of PRECISIONS: the backbone's arithmetic in training (MixedPrecision)
    data: str | None = None


def learning_rate_schedule(optimiser: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """``cosine``: from ``lr`` down to 0 at the last episode along half a cosine (Loshchilov & Hutter 2017),
    so the run ends on small steps whatever its length; ``step``: halve every ``lr_halve_every`` episodes."""
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.episodes)
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimiser, step_size=config.lr_halve_every, gamma=0.5)
    raise ValueError(f"--lr-schedule must be one of {', '.join(LR_SCHEDULES)}, not {config.lr_schedule!r}")


def resolve_precision(precision: str) -> str:
    """``auto`` is bf16 where the CPU multiplies bf16 natively (AVX-512 BF16, which AMX CPUs have too) and fp32
    elsewhere, where emulated bf16 is no faster than fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bf16" if torch.cpu._is_avx512_bf16_supported() else "fp32"
    return precision


class MixedPrecision(torch.nn.Module):
    """A backbone whose convolutions run in bf16 (CPU autocast) and whose embeddings come out in fp32.

    Why: on this repository's 2-core AMX machine the backbone's forward and backward are ~1.5× faster in
    bf16, so more episodes fit the training budget.  Weights, optimiser state and everything after the
    embedding (squared distances, softmax, the inner loops over a head) stay fp32, where bf16's 8-bit
    mantissa would blur the small differences between large squared distances.  Validation and export use
    the wrapped fp32 backbone itself, so checkpoints are chosen at the precision they are served at.
    """

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            embeddings = self.backbone(images)
        return embeddings.float()


def embed_episode(backbone: torch.nn.Module, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed support and queries in one forward pass (batch norm sees the whole episode)."""
    images = torch.from_numpy(to_model_input(np.concatenate([episode.support, episode.query])))
    embeddings = backbone(images)
    return embeddings[: len(episode.support)], embeddings[len(episode.support) :]


def episode_loss(config: TrainConfig, backbone: torch.nn.Module, head: torch.nn.Module | None,
                 episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    """The configured algorithm's query loss and accuracy on one episode."""
    ways = len(episode.classes)
    support_y, query_y = torch.from_numpy(episode.support_labels), torch.from_numpy(episode.query_labels)
    if config.algorithm in ("anil", "maml"):
        support_x = torch.from_numpy(to_model_input(episode.support))
        query_x = torch.from_numpy(to_model_input(episode.query))
        if config.algorithm == "anil":
            return anil.episode_loss(backbone, head, support_x, support_y, query_x, query_y,
                                     config.inner_steps, config.inner_lr, config.first_order)
        return maml.episode_loss(torch.nn.Sequential(backbone, head), support_x, support_y, query_x, query_y,
                                 config.inner_steps, config.inner_lr, config.first_order)
    support, queries = embed_episode(backbone, episode)
    if config.algorithm == "proto-maml":
        return proto_maml.episode_loss(support, support_y, queries, query_y, ways, config.inner_steps, config.inner_lr)
    return protonet.loss(support, support_y, queries, query_y, ways)


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

    if config.algorithm not in ALGORITHMS:
        raise ValueError(f"--algorithm must be one of {', '.join(ALGORITHMS)}, not {config.algorithm!r}")
    # NHWC weights make these convolutions ~15% faster on CPU (measured on Conv-4); the
    # layout changes neither the math nor the checkpoint's values.
    backbone = BACKBONES[config.backbone]().to(memory_format=torch.channels_last)
    # MAML and ANIL learn a linear head's initialisation too; the prototype methods derive it from the support set.
    head = torch.nn.Linear(backbone(torch.zeros(1, 1, 28, 28)).shape[1], config.ways) \
        if config.algorithm in ("anil", "maml") else None
    modules = torch.nn.ModuleList([backbone] + ([head] if head is not None else []))
    precision = resolve_precision(config.precision)
    trained = MixedPrecision(backbone) if precision == "bf16" else backbone  # same parameters either way
    optimiser = torch.optim.Adam(modules.parameters(), lr=config.lr)
    scheduler = learning_rate_schedule(optimiser, config)
    state = {"episode": 0, "best_accuracy": 0.0, "seconds": 0.0, "history": []}
    if resume and (out / "last.pt").exists():
        checkpoint = torch.load(out / "last.pt", weights_only=False)
        modules.load_state_dict(checkpoint["modules"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
    # A fresh seed per resumed start keeps episodes from repeating after a resume.
    sampler = EpisodeSampler(train_data, config.ways, config.shots, config.queries, seed=config.seed + state["episode"])

    started = time.monotonic() - state["seconds"]
    progress = tqdm(range(state["episode"], config.episodes), initial=state["episode"], total=config.episodes, desc="train")
    shifts = np.random.default_rng(config.seed + state["episode"] + 1)
    for episode_index in progress:
        episode = sampler.sample()
        episode = replace(episode, support=random_shift(episode.support, config.shift, shifts),
                          query=random_shift(episode.query, config.shift, shifts))  # --shift 0: unchanged
        loss, accuracy = episode_loss(config, trained, head, episode)
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
            torch.save({"modules": modules.state_dict(), "optimiser": optimiser.state_dict(),
                        "scheduler": scheduler.state_dict(), "state": state, "config": asdict(config)}, out / "last.pt")

    best = torch.load(out / "best.pt", weights_only=False)
    summary = {
        "train_config": asdict(config),
        "best_val_5way_1shot": state["best_accuracy"],
        "precision": precision,
        "threads": torch.get_num_threads(),
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
        flag = f"--{field.replace('_', '-')}"
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        else:
            parser.add_argument(flag, type=type(default) if default is not None else str, default=default,
                                choices={"algorithm": ALGORITHMS, "lr_schedule": LR_SCHEDULES,
                                         "precision": PRECISIONS}.get(field))
    args = vars(parser.parse_args(argv))
    out, resume = args.pop("out"), args.pop("resume")
    summary = train(TrainConfig(**args), out, resume)
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
