"""Meta-fine-tune the all-MiniLM-L6-v2 sentence encoder on CLINC150 training domains.

    python -m metalearn.train_text --out runs/clinc-minilm [--episodes 400]

Prototypical-Network episodes (:mod:`metalearn.algorithms.protonet`) over the
intents of :data:`metalearn.clinc.TRAIN_DOMAINS`: the encoder's unit-length
embeddings, squared euclidean distances to the class means, divided by a
fixed temperature (distances between unit vectors lie in [0, 4], too flat a
softmax otherwise).  The lower ``--frozen-layers`` run without gradients,
which halves a step's cost on the CPU and keeps the pretrained lexical layers
as they are.  ``--max-minutes`` ends the run early (after one more validation)
on a shared machine; the model card records the episodes actually run.  Every ``--val-every`` episodes the encoder is scored by
prototypes on 5-way 1-shot episodes of the validation domains (embeddings of
each validation request computed once per check); the best state is kept in
``best.pt``.  Test domains are never read here.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from metalearn import clinc
from metalearn.algorithms import protonet
from metalearn.minilm import load_pretrained
from metalearn.text_encoding import embed_texts, make_tokenizer, token_tensors


@dataclass
class TextTrainConfig:
    """Everything that decides a run; written into the model card."""

    episodes: int = 400
    ways: int = 10
    shots: int = 2
    queries: int = 3
    same_domain: bool = False  # every episode's intents from one domain: neighbours to tell apart
    lr: float = 3e-5
    temperature: float = 0.1
    frozen_layers: int = 2
    max_tokens: int = 32
    val_every: int = 100
    val_episodes: int = 500
    max_minutes: float = 0.0  # stop after the first validation past this much training time (0: no limit)
    seed: int = 0
    threads: int = 2
    data: str | None = None


def prototype_accuracy(embeddings: np.ndarray, data: clinc.FewShotTexts, episodes: int, ways: int, shots: int,
                       queries: int, seed: int) -> float:
    """Mean accuracy of nearest-prototype classification on episodes over precomputed embeddings."""
    sampler = clinc.TextEpisodeSampler(data, ways, shots, queries, seed=seed)
    z = torch.from_numpy(embeddings)
    correct = []
    for _ in range(episodes):
        episode = sampler.sample()
        protos = protonet.prototypes(z[episode.support], torch.from_numpy(episode.support_labels), ways)
        predicted = protonet.logits(z[episode.query], protos).argmax(-1).numpy()
        correct.append((predicted == episode.query_labels).mean())
    return float(np.mean(correct))


def train(config: TextTrainConfig, out: Path) -> dict:
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    out.mkdir(parents=True, exist_ok=True)
    encoder, tokenizer_json = load_pretrained(config.frozen_layers)
    tokenizer = make_tokenizer(tokenizer_json, config.max_tokens)
    train_data, val_data = clinc.load("train", config.data), clinc.load("val", config.data)
    train_texts, _ = train_data.flat()
    val_texts, _ = val_data.flat()

    def validate() -> float:
        embeddings = embed_texts(encoder, tokenizer, val_texts)
        return prototype_accuracy(embeddings, val_data, config.val_episodes, 5, 1, 5, seed=config.seed + 1)

    optimiser = torch.optim.AdamW(encoder.trainable_parameters(), lr=config.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.episodes)
    sampler = clinc.TextEpisodeSampler(train_data, config.ways, config.shots, config.queries, seed=config.seed,
                                       same_domain=config.same_domain)
    history = [{"episode": 0, "val_5way_1shot": validate()}]
    best = history[0]["val_5way_1shot"]
    torch.save({"encoder": encoder.state_dict(), "config": asdict(config)}, out / "best.pt")
    print(json.dumps(history[-1]), flush=True)
    started, losses = time.monotonic(), []
    for index in range(1, config.episodes + 1):
        encoder.train()
        episode = sampler.sample()
        ids, mask = token_tensors(tokenizer, [train_texts[i] for i in np.concatenate([episode.support, episode.query])])
        z = encoder(ids, mask)
        support, query = z[: len(episode.support)], z[len(episode.support):]
        loss, _ = protonet.loss(support, torch.from_numpy(episode.support_labels), query,
                                torch.from_numpy(episode.query_labels), config.ways, config.temperature)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        out_of_time = config.max_minutes and time.monotonic() - started > 60 * config.max_minutes
        if index % config.val_every == 0 or index == config.episodes or out_of_time:
            accuracy = validate()
            history.append({"episode": index, "val_5way_1shot": accuracy, "train_loss": float(np.mean(losses)),
                            "seconds": round(time.monotonic() - started, 1)})
            losses = []
            print(json.dumps(history[-1]), flush=True)
            if accuracy > best:
                best = accuracy
                torch.save({"encoder": encoder.state_dict(), "config": asdict(config)}, out / "best.pt")
            if out_of_time:
                break
    summary = {"best_val_5way_1shot": best, "pretrained_val_5way_1shot": history[0]["val_5way_1shot"],
               "train_seconds": round(time.monotonic() - started, 1), "threads": config.threads,
               "episodes_run": history[-1]["episode"],
               "history": history}
    checkpoint = torch.load(out / "best.pt", weights_only=False)
    torch.save({**checkpoint, "summary": summary}, out / "best.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    for name, value in asdict(TextTrainConfig()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value) if value is not None else str, default=value)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    print(json.dumps(train(TextTrainConfig(**args), out)))


if __name__ == "__main__":
    main()
