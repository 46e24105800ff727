"""MAML, ANIL and Proto-MAML against inner loops written out by hand on a 2-feature, 2-class problem."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalearn.algorithms import anil, maml, proto_maml, protonet
from metalearn.backbones import Conv4
from metalearn.heads import FineTuneHead

SUPPORT_X = torch.tensor([[1.0, 0.5], [0.8, -0.2], [-0.6, 0.9], [-1.0, -0.4]])
SUPPORT_Y = torch.tensor([0, 0, 1, 1])
QUERY_X = torch.tensor([[0.9, 0.1], [-0.7, 0.3], [0.2, -0.8]])
QUERY_Y = torch.tensor([0, 1, 0])
HEAD_W = torch.tensor([[0.3, -0.2], [-0.1, 0.4]])
HEAD_B = torch.tensor([0.1, -0.1])
BODY_W = torch.tensor([[1.0, 0.5], [-0.5, 1.0]])
BODY_B = torch.tensor([0.0, 0.1])
RATE = 0.5


def onehot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, 2).float()


def ce_gradient(weight, bias, x, labels, temperature=1.0):
    """∂/∂(W, b) of the mean cross-entropy of softmax((x·Wᵀ + b)/T): ((P − Y)ᵀx, 1ᵀ(P − Y)) / (S·T)."""
    error = (torch.softmax((x @ weight.T + bias) / temperature, -1) - onehot(labels)) / (len(x) * temperature)
    return error.T @ x, error.sum(0)


def hand_steps(weight, bias, x, labels, steps, temperature=1.0, detach=False):
    for _ in range(steps):
        dw, db = ce_gradient(weight, bias, x, labels, temperature)
        if detach:
            dw, db = dw.detach(), db.detach()
        weight, bias = weight - RATE * dw, bias - RATE * db
    return weight, bias


def linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


def hand_prototype_head(support):
    protos = torch.stack([support[:2].mean(0), support[2:].mean(0)])  # SUPPORT_Y is [0, 0, 1, 1]
    return 2 * protos, -(protos ** 2).sum(1)


@pytest.mark.parametrize("steps", [1, 2])
def test_maml_inner_loop_is_gradient_descent_by_hand(steps):
    model = linear(HEAD_W, HEAD_B)
    adapted = maml.adapt(model, dict(model.named_parameters()), SUPPORT_X, SUPPORT_Y, steps, RATE)
    weight, bias = hand_steps(HEAD_W, HEAD_B, SUPPORT_X, SUPPORT_Y, steps)
    torch.testing.assert_close(adapted["weight"], weight)
    torch.testing.assert_close(adapted["bias"], bias)
    assert torch.equal(model.weight.detach(), HEAD_W), "adapting must not overwrite the model"


def test_maml_meta_gradient_second_and_first_order():
    model = linear(HEAD_W, HEAD_B)
    second = maml.episode_loss(model, SUPPORT_X, SUPPORT_Y, QUERY_X, QUERY_Y, 2, RATE)[0]
    first = maml.episode_loss(model, SUPPORT_X, SUPPORT_Y, QUERY_X, QUERY_Y, 2, RATE, first_order=True)[0]
    second_grad = torch.autograd.grad(second, [model.weight, model.bias])
    first_grad = torch.autograd.grad(first, [model.weight, model.bias])

    # Second order: autograd through the hand-written steps.
    weight0, bias0 = HEAD_W.clone().requires_grad_(True), HEAD_B.clone().requires_grad_(True)
    weight, bias = hand_steps(weight0, bias0, SUPPORT_X, SUPPORT_Y, 2)
    query_loss = F.cross_entropy(QUERY_X @ weight.T + bias, QUERY_Y)
    torch.testing.assert_close(second, query_loss)
    for actual, expected in zip(second_grad, torch.autograd.grad(query_loss, [weight0, bias0])):
        torch.testing.assert_close(actual, expected)

    # First order: the steps' gradients detached, so the meta-gradient is the query gradient at θ_K.
    weight, bias = hand_steps(HEAD_W, HEAD_B, SUPPORT_X, SUPPORT_Y, 2, detach=True)
    for actual, expected in zip(first_grad, ce_gradient(weight, bias, QUERY_X, QUERY_Y)):
        torch.testing.assert_close(actual, expected)

    torch.testing.assert_close(first, second)  # same adapted parameters, same loss
    assert not torch.allclose(first_grad[0], second_grad[0], atol=1e-4)


def test_maml_trains_every_parameter_of_a_batch_norm_backbone():
    torch.manual_seed(0)
    model = nn.Sequential(Conv4(filters=4), nn.Linear(4, 2))
    images = torch.randn(6, 1, 28, 28)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    loss, accuracy = maml.episode_loss(model, images[:4], labels[:4], images[4:], labels[4:], 2, 0.1)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert 0.0 <= accuracy <= 1.0
    # Running statistics are updated by the query pass only, not by the inner steps.
    assert int(model[0].encoder[0][1].num_batches_tracked) == 1


def test_anil_adapts_the_head_on_a_fixed_backbone():
    backbone, head = nn.Sequential(linear(BODY_W, BODY_B), nn.Tanh()), linear(HEAD_W, HEAD_B)
    loss, accuracy = anil.episode_loss(backbone, head, SUPPORT_X, SUPPORT_Y, QUERY_X, QUERY_Y, 2, RATE)

    # By hand: the backbone's parameters stay as they were, only the head takes steps.
    reference = [t.clone().requires_grad_(True) for t in (BODY_W, BODY_B, HEAD_W, HEAD_B)]
    body_w, body_b, head_w, head_b = reference
    support, queries = torch.tanh(SUPPORT_X @ body_w.T + body_b), torch.tanh(QUERY_X @ body_w.T + body_b)
    weight, bias = hand_steps(head_w, head_b, support, SUPPORT_Y, 2)
    logits = queries @ weight.T + bias
    expected = F.cross_entropy(logits, QUERY_Y)
    torch.testing.assert_close(loss, expected)
    assert accuracy == (logits.argmax(-1) == QUERY_Y).float().mean()

    # The outer loop trains both, through the embeddings and the head's steps.
    parameters = [backbone[0].weight, backbone[0].bias, head.weight, head.bias]
    for actual, wanted in zip(torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, reference)):
        torch.testing.assert_close(actual, wanted)
        assert actual.abs().sum() > 0

    # MAML on the same network also moves the backbone, and lands elsewhere.
    whole = maml.episode_loss(nn.Sequential(backbone, head), SUPPORT_X, SUPPORT_Y, QUERY_X, QUERY_Y, 2, RATE)[0]
    assert not torch.allclose(loss, whole, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 2])
def test_proto_maml_inner_loop_by_hand(steps):
    temperature = 2.0
    head = proto_maml.adapt(SUPPORT_X, SUPPORT_Y, 2, steps, RATE, temperature)
    weight, bias = hand_steps(*hand_prototype_head(SUPPORT_X), SUPPORT_X, SUPPORT_Y, steps, temperature)
    torch.testing.assert_close(head["weight"], weight)
    torch.testing.assert_close(head["bias"], bias)
    served = FineTuneHead()(SUPPORT_X, onehot(SUPPORT_Y), torch.tensor(False), torch.tensor(temperature),
                            torch.tensor(steps), torch.tensor(RATE), torch.tensor(0.0))
    torch.testing.assert_close(head["weight"], served[0])
    torch.testing.assert_close(head["bias"], served[1])


def test_proto_maml_with_no_steps_is_protonet():
    temperature = 2.0
    support, queries = SUPPORT_X.clone().requires_grad_(True), QUERY_X.clone().requires_grad_(True)
    loss, accuracy = proto_maml.episode_loss(support, SUPPORT_Y, queries, QUERY_Y, 2, 0, RATE, temperature)
    expected, expected_accuracy = protonet.loss(support, SUPPORT_Y, queries, QUERY_Y, 2, temperature)
    torch.testing.assert_close(loss, expected)
    assert accuracy == expected_accuracy
    for actual, reference in zip(torch.autograd.grad(loss, [support, queries]),
                                 torch.autograd.grad(expected, [support, queries])):
        torch.testing.assert_close(actual, reference)


def test_proto_maml_gradient_reaches_the_backbone_through_the_prototypes_only():
    temperature = 2.0
    support = SUPPORT_X.clone().requires_grad_(True)
    loss = proto_maml.episode_loss(support, SUPPORT_Y, QUERY_X, QUERY_Y, 2, 2, RATE, temperature)[0]
    actual = torch.autograd.grad(loss, support)[0]

    def support_gradient(detach):
        reference = SUPPORT_X.clone().requires_grad_(True)
        weight, bias = hand_steps(*hand_prototype_head(reference), reference, SUPPORT_Y, 2, temperature, detach)
        query_loss = F.cross_entropy((QUERY_X @ weight.T + bias) / temperature, QUERY_Y)
        return torch.autograd.grad(query_loss, reference)[0]

    torch.testing.assert_close(actual, support_gradient(detach=True))
    assert actual.abs().sum() > 0
    assert not torch.allclose(actual, support_gradient(detach=False), atol=1e-4)
