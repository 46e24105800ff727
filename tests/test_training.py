"""Training, export and evaluation end to end on a tiny budget."""
from __future__ import annotations

import json
import math

import numpy as np
import onnxruntime as ort
import pytest
import torch

from metalearn.augmentation import random_shift
from metalearn.algorithms import protonet
from metalearn.backbones import BACKBONES, RotationEnsemble, quarter_turns
from metalearn.data import load_split, split_by_alphabet, to_model_input
from metalearn.episodes import EpisodeSampler
from metalearn.evaluate import evaluate, in_process
from metalearn.export import export, export_backbone
from metalearn.train import MixedPrecision, TrainConfig, learning_rate_schedule, resolve_precision, train
from metalearn_server.execution.model_config import ModelConfig


def test_episodes_are_reproducible_and_well_formed():
    data = load_split("background")
    first = EpisodeSampler(data, ways=5, shots=2, queries=3, seed=4).sample()
    again = EpisodeSampler(data, ways=5, shots=2, queries=3, seed=4).sample()
    assert np.array_equal(first.support, again.support) and np.array_equal(first.classes, again.classes)
    assert first.support.shape == (10, 28, 28) and first.query.shape == (15, 28, 28)
    assert np.bincount(first.support_labels).tolist() == [2] * 5
    assert len(set(first.classes.tolist())) == 5


def test_validation_alphabets_are_disjoint_from_training():
    train_data, val_data = split_by_alphabet(load_split("background"), validation_alphabets=5)
    assert not set(train_data.alphabets) & set(val_data.alphabets)
    assert len(set(val_data.alphabets)) == 5
    assert len(train_data.with_rotations().images) == 4 * len(train_data.images)


def test_random_shift_translates_each_image_within_bounds():
    images = np.zeros((200, 28, 28), np.uint8)
    images[:, 12:16, 10:14] = np.arange(1, 17, dtype=np.uint8).reshape(4, 4)  # a 4×4 mark, all distinct
    shifted = random_shift(images, 2, np.random.default_rng(0))
    offsets = set()
    for image in shifted:
        rows, cols = np.nonzero(image)
        assert rows.min() - 12 == rows.max() - 15 and cols.min() - 10 == cols.max() - 13  # moved, not cut
        offset = (int(rows.min()) - 12, int(cols.min()) - 10)
        assert max(map(abs, offset)) <= 2
        assert np.array_equal(image[12 + offset[0]:16 + offset[0], 10 + offset[1]:14 + offset[1]],
                              images[0, 12:16, 10:14])
        offsets.add(offset)
    assert len(offsets) == 25  # every offset in [-2, 2]² occurs
    assert np.array_equal(random_shift(images, 0, np.random.default_rng(0)), images)
    assert np.array_equal(shifted, random_shift(images, 2, np.random.default_rng(0)))


def test_conv4_backbones_embedding_sizes():
    images = torch.zeros(3, 1, 28, 28)
    assert BACKBONES["conv4"]()(images).shape == (3, 64)
    assert BACKBONES["conv4-3x3"]()(images).shape == (3, 64 * 3 * 3)


def test_quarter_turns_are_rot90():
    images = torch.randn(3, 1, 5, 5)
    for turns, view in enumerate(quarter_turns(images)):
        assert torch.equal(view, torch.rot90(images, turns, dims=(2, 3)))


def test_rotation_ensemble_sums_the_views_prototype_logits(tmp_path):
    """The concatenated embedding's ProtoNet logits are the four views' logits added up; ONNX agrees with torch."""
    torch.manual_seed(0)
    backbone = BACKBONES["conv4"]().eval()
    ensemble = RotationEnsemble(backbone).eval()
    episode = EpisodeSampler(load_split("evaluation"), ways=3, shots=2, queries=2, seed=0).sample()
    support, queries = (torch.from_numpy(to_model_input(x)) for x in (episode.support, episode.query))
    labels = torch.from_numpy(episode.support_labels).long()
    with torch.no_grad():
        combined = protonet.logits(ensemble(queries), protonet.prototypes(ensemble(support), labels, 3))
        per_view = sum(protonet.logits(backbone(q), protonet.prototypes(backbone(s), labels, 3))
                       for s, q in zip(quarter_turns(support), quarter_turns(queries)))
        torch.testing.assert_close(combined, per_view, rtol=1e-4, atol=1e-4)

        assert export_backbone(ensemble, tmp_path / "backbone.onnx") == 4 * 64
        session = ort.InferenceSession(str(tmp_path / "backbone.onnx"), providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(session.run(None, {"images": support.numpy()})[0], ensemble(support).numpy(),
                                   rtol=1e-3, atol=1e-4)


def test_learning_rate_schedules_follow_their_formulas():
    def rates(config: TrainConfig) -> list[float]:
        optimiser = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=config.lr)
        scheduler, seen = learning_rate_schedule(optimiser, config), []
        for _ in range(config.episodes):
            seen.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            scheduler.step()
        return seen

    cosine = rates(TrainConfig(lr=2e-3, episodes=100, lr_schedule="cosine"))
    expected = [1e-3 * (1 + math.cos(math.pi * t / 100)) for t in range(100)]
    np.testing.assert_allclose(cosine, expected, rtol=1e-9)
    step = rates(TrainConfig(lr=1e-3, episodes=100, lr_schedule="step", lr_halve_every=40))
    assert (step[39], step[40], step[80]) == pytest.approx((1e-3, 5e-4, 2.5e-4), rel=1e-12)
    with pytest.raises(ValueError, match="--lr-schedule"):
        rates(TrainConfig(episodes=10, lr_schedule="linear"))


def test_mixed_precision_runs_the_backbone_in_bf16_and_hands_on_fp32():
    backbone = BACKBONES["conv4-3x3"]()
    images = torch.randn(6, 1, 28, 28)
    exact = backbone(images)
    mixed = MixedPrecision(backbone)(images)
    assert mixed.dtype == torch.float32
    assert not torch.equal(mixed, exact)  # the convolutions really ran in bf16 ...
    torch.testing.assert_close(mixed, exact, rtol=0.05, atol=0.05)  # ... at bf16's ~3 significant digits
    mixed.square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and p.grad.abs().sum() > 0
               for p in backbone.parameters())  # fp32 gradients reach the fp32 weights


def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_bf16(monkeypatch):
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto") == expected
        assert (resolve_precision("fp32"), resolve_precision("bf16")) == ("fp32", "bf16")
    with pytest.raises(ValueError, match="--precision"):
        resolve_precision("fp16")


def test_short_training_improves_validation_and_exports_a_servable_model(tmp_path):
    config = TrainConfig(ways=20, shots=1, queries=5, episodes=60, val_every=30, val_episodes=60, seed=1)
    summary = train(config, tmp_path / "run")
    history = [h["val_5way_1shot"] for h in summary["history"]]
    untrained = _untrained_accuracy(config)
    assert max(history) > untrained + 0.05, (untrained, history)

    directory = export(tmp_path / "run" / "best.pt", tmp_path / "repository", "tiny")
    config_file = ModelConfig.load(directory / "config.json")
    assert config_file.embedding_size == 576 and all(t > 0 for t in config_file.temperature.values())
    card = (directory / "MODEL_CARD.md").read_text()
    assert "background" in card
    assert f"on {torch.get_num_threads()} CPU threads, {summary['precision']} backbone arithmetic" in card

    # ONNX backbone equals the torch backbone (relative tolerance: unnormalised embeddings).
    checkpoint = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    backbone = BACKBONES[config.backbone]()
    backbone.load_state_dict(checkpoint["backbone"])
    backbone.eval()
    images = to_model_input(load_split("evaluation").images[:8, 0])
    session = ort.InferenceSession(str(directory / "backbone.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"images": images})[0],
                               backbone(torch.from_numpy(images)).detach().numpy(), rtol=1e-3, atol=1e-4)

    accuracy = evaluate(in_process(tmp_path / "repository"), load_split("evaluation"), 5, 1, "prototype",
                        episodes=20)
    assert 0.2 < accuracy.mean <= 1 and accuracy.ci95 > 0
    json.dumps(summary)  # the summary is what the model card is written from


def _untrained_accuracy(config: TrainConfig) -> float:
    from metalearn.train import validation_accuracy

    torch.manual_seed(config.seed)
    _, val_data = split_by_alphabet(load_split("background"), config.val_alphabets, config.seed)
    return validation_accuracy(BACKBONES[config.backbone](), val_data, config.val_episodes, seed=config.seed)
