"""The heads' math against independent references, and their ONNX export against torch."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from metalearn.algorithms import protonet
from metalearn.export import export_heads
from metalearn.heads import FineTuneHead, LinearHead, PrototypeHead

torch.manual_seed(0)
SUPPORT = torch.randn(7, 5)
LABELS = torch.tensor([0, 0, 1, 1, 1, 2, 2])  # unequal shots
ONEHOT = torch.nn.functional.one_hot(LABELS, 3).float()
QUERIES = torch.randn(4, 5)
TEMPERATURE = torch.tensor(2.0)


def test_prototypes_by_hand():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    protos = protonet.prototypes(support, torch.tensor([0, 0, 1]), 2)
    assert protos.tolist() == [[1.0, 0.0], [0.0, 4.0]]
    query = torch.tensor([[1.0, 1.0]])
    assert protonet.squared_euclidean(query, protos).tolist() == [[1.0, 10.0]]


@pytest.mark.parametrize("cosine", [False, True])
def test_prototype_head_is_protonet_softmax(cosine):
    weight, bias = PrototypeHead()(SUPPORT, ONEHOT, torch.tensor(cosine))
    probs, nearest = LinearHead()(QUERIES, weight, bias, torch.tensor(cosine), TEMPERATURE)
    if cosine:
        unit = torch.nn.functional.normalize
        protos = unit(protonet.prototypes(unit(SUPPORT, dim=1), LABELS, 3), dim=1)
        expected = torch.softmax(2 * unit(QUERIES, dim=1) @ protos.T / TEMPERATURE, -1)
    else:
        expected = torch.softmax(protonet.logits(QUERIES, protonet.prototypes(SUPPORT, LABELS, 3)) / TEMPERATURE, -1)
        # The open-set distance is the squared distance to the nearest prototype.
        distances = protonet.squared_euclidean(QUERIES, protonet.prototypes(SUPPORT, LABELS, 3))
        torch.testing.assert_close(nearest, distances.min(-1).values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)


def test_finetune_step_is_the_autograd_gradient():
    """One analytic step equals one SGD step on the support cross-entropy plus (λ/2)‖W‖² by autograd."""
    rate, l2 = 0.3, 0.05
    weight0, bias0 = PrototypeHead()(SUPPORT, ONEHOT, torch.tensor(False))
    weight = weight0.clone().requires_grad_(True)
    bias = bias0.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy((SUPPORT @ weight.T + bias) / TEMPERATURE, LABELS) \
        + 0.5 * l2 * (weight ** 2).sum()
    loss.backward()
    expected = (weight0 - rate * weight.grad, bias0 - rate * bias.grad)
    actual = FineTuneHead()(SUPPORT, ONEHOT, torch.tensor(False), TEMPERATURE, torch.tensor(1),
                            torch.tensor(rate), torch.tensor(l2))
    torch.testing.assert_close(actual[0], expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actual[1], expected[1], rtol=1e-5, atol=1e-6)


def test_finetune_with_zero_steps_is_the_prototype_head():
    adapted = FineTuneHead()(SUPPORT, ONEHOT, torch.tensor(False), TEMPERATURE, torch.tensor(0),
                             torch.tensor(1.0), torch.tensor(0.0))
    initial = PrototypeHead()(SUPPORT, ONEHOT, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(adapted, initial))


def test_more_steps_lower_the_support_loss():
    losses = []
    for steps in (0, 1, 5, 25):
        weight, bias = FineTuneHead()(SUPPORT, ONEHOT, torch.tensor(False), TEMPERATURE, torch.tensor(steps),
                                      torch.tensor(0.5), torch.tensor(0.0))
        losses.append(float(torch.nn.functional.cross_entropy((SUPPORT @ weight.T + bias) / TEMPERATURE, LABELS)))
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]


@pytest.mark.parametrize("cosine", [False, True])
@pytest.mark.parametrize("steps", [0, 3])
def test_onnx_heads_match_torch(tmp_path, cosine, steps):
    export_heads(tmp_path, embedding_size=5)
    sessions = {name: ort.InferenceSession(str(tmp_path / f"{name}_head.onnx"), providers=["CPUExecutionProvider"])
                for name in ("prototype", "finetune", "linear")}
    flag, rate, l2 = torch.tensor(cosine), torch.tensor(0.2), torch.tensor(0.01)
    feeds = {"support": SUPPORT.numpy(), "support_onehot": ONEHOT.numpy(), "cosine": np.array(cosine)}
    onnx_head = sessions["finetune"].run(None, {**feeds, "temperature": np.array(2.0, np.float32),
                                                "steps": np.array(steps), "learning_rate": np.array(0.2, np.float32),
                                                "l2": np.array(0.01, np.float32)})
    torch_head = FineTuneHead()(SUPPORT, ONEHOT, flag, TEMPERATURE, torch.tensor(steps), rate, l2)
    for onnx_value, torch_value in zip(onnx_head, torch_head):
        np.testing.assert_allclose(onnx_value, torch_value.numpy(), rtol=1e-5, atol=1e-6)
    outputs = sessions["linear"].run(None, {"queries": QUERIES.numpy(), "weight": onnx_head[0], "bias": onnx_head[1],
                                            "cosine": np.array(cosine), "temperature": np.array(2.0, np.float32)})
    expected = LinearHead()(QUERIES, *torch_head, flag, TEMPERATURE)
    for onnx_value, torch_value in zip(outputs, expected):
        np.testing.assert_allclose(onnx_value, torch_value.numpy(), rtol=1e-5, atol=1e-5)
    prototype = sessions["prototype"].run(None, feeds)
    if steps == 0:
        np.testing.assert_allclose(prototype[0], onnx_head[0], rtol=1e-6)


@pytest.mark.parametrize("true_temperature, offset, spread", [
    (1.5, 0.0, 40.0),  # euclidean-like: logits spread over tens
    (0.004, 1.0, 0.02),  # cosine-like: 2·cos − 1 of non-negative embeddings, all close to 1
])
def test_temperature_scaling_recovers_the_true_temperature(true_temperature, offset, spread):
    """Labels drawn from softmax(logits / T): the fit finds T at either scale.  (A fixed-step
    optimiser started at T = 1 stays near 1 on the cosine-like logits, where the loss is flat.)"""
    from metalearn.calibration import scaling_temperature

    generator = torch.Generator().manual_seed(0)
    logits = offset - torch.randn(4000, 5, generator=generator).abs() * spread
    labels = torch.multinomial(torch.softmax(logits / true_temperature, dim=1), 1, generator=generator).squeeze(1)
    assert scaling_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.1)


def test_the_adaptation_fit_takes_the_steps_that_fix_what_prototypes_get_wrong():
    """A support outlier drags class A's prototype away, so the prototype boundary (x = 0) passes through
    A's cluster at x = 0 and puts A's query at x = 0.2 on B's side; gradient steps on the support loss move
    the boundary towards the max-margin one between the clusters (x = 0.5).  The fit must find that
    prototypes (0 steps) are worse, and of the points that get both queries right take the fewest steps,
    then the smallest rate."""
    from metalearn.calibration import LEARNING_RATE_GRID, adaptation_accuracy, fit_adaptation

    support = torch.tensor([[0.0, 0.0]] * 3 + [[-4.0, 0.0]] + [[1.0, 0.0]] * 4)
    onehot = torch.nn.functional.one_hot(torch.tensor([0] * 4 + [1] * 4), 2).float()
    episode = (support, onehot, torch.tensor([[0.2, 0.0], [0.8, 0.0]]), torch.tensor([0, 1]))
    assert adaptation_accuracy([episode], 1.0, 0, 1.0, 0.0) == 0.5
    fitted, grid = fit_adaptation([[episode]], 1.0, (0, 10, 100), 0.0)
    assert set(grid) == {(steps, rate) for steps in (0, 10, 100) for rate in LEARNING_RATE_GRID}
    assert grid[fitted["steps"], fitted["learning_rate"]] == [1.0] and fitted["l2"] == 0.0
    assert fitted["steps"] > 0
    assert all(accuracy < [1.0] for (steps, rate), accuracy in grid.items()
               if (steps, rate) < (fitted["steps"], fitted["learning_rate"]))
