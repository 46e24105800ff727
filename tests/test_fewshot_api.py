"""Every FewShotService and ModelService RPC, over real gRPC to a live server."""
from __future__ import annotations

import datetime as dt

import grpc
import numpy as np
import pytest

from helpers import as_png, as_tensor, labels_of
from metalearn_client import MetalearnError


def test_classify_labels_held_out_characters(client, episode):
    support_labels = labels_of(episode, episode.support_labels)
    result = client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query), top_k=3)

    # Classes come back in order of first appearance in the support set.
    assert result.classes == list(dict.fromkeys(support_labels))
    assert len(result.predictions) == len(episode.query)
    scores = result.scores
    assert scores.shape == (len(episode.query), 5)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)
    for prediction in result.predictions:
        assert prediction.label == result.classes[int(np.argmax(prediction.scores))]
        assert [label for label, _ in prediction.top_k][0] == prediction.label
        assert len(prediction.top_k) == 3
        assert prediction.top_k[0][1] >= prediction.top_k[1][1] >= prediction.top_k[2][1]
    accuracy = np.mean(np.array(result.labels) == np.array(labels_of(episode, episode.query_labels)))
    assert accuracy >= 0.9, f"5-way 5-shot accuracy on held-out characters was {accuracy:.2f}"
    assert (result.model, result.model_version, result.method, result.distance) == \
        ("omniglot-conv4", client.get_model().version, "prototype", "euclidean")


def test_encoded_images_match_the_tensor_path(client, episode):
    """PNG files of another size and polarity, preprocessed by the server, classify as well as tensors."""
    support_labels = labels_of(episode, episode.support_labels)
    truth = np.array(labels_of(episode, episode.query_labels))
    pngs = client.classify([as_png(i) for i in episode.support], support_labels, [as_png(i) for i in episode.query])
    tensors = client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query))
    assert np.mean(np.array(pngs.labels) == truth) >= np.mean(np.array(tensors.labels) == truth) - 0.1
    assert np.mean(np.array(pngs.labels) == truth) >= 0.85


def test_unequal_shots_and_many_classes(client, evaluation_data):
    images = evaluation_data.images
    support = np.concatenate([images[c, :shots] for c, shots in zip(range(20), [1, 2, 3, 4, 5] * 4)])
    labels = [f"c{c}" for c, shots in zip(range(20), [1, 2, 3, 4, 5] * 4) for _ in range(shots)]
    queries = images[:20, 10]
    result = client.classify(as_tensor(support), labels, as_tensor(queries))
    assert len(result.classes) == 20
    assert np.mean(np.array(result.labels) == np.array([f"c{c}" for c in range(20)])) >= 0.8


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_finetune_with_zero_steps_equals_prototypes(client, episode, distance):
    args = (as_tensor(episode.support), labels_of(episode, episode.support_labels), as_tensor(episode.query))
    prototype = client.classify(*args, method="prototype", distance=distance)
    finetune = client.classify(*args, method="finetune", distance=distance, steps=0)
    assert finetune.method == "finetune" and finetune.distance == distance
    assert finetune.labels == prototype.labels
    np.testing.assert_allclose(finetune.scores, prototype.scores, rtol=1e-5, atol=1e-6)


def test_finetune_steps_descend_the_support_loss(client, episode):
    """Adaptation is gradient descent on the support cross-entropy under the served probabilities
    (same temperature), even for labels the prototypes disagree with: the loss falls, further with a
    larger learning rate.  (Argmax fit need not rise at every step; the loss must.)"""
    support = as_tensor(episode.support)
    # Relabel one shot of every class as the next class: prototypes alone misclassify those items.
    labels = labels_of(episode, episode.support_labels)
    relabelled = list(labels)
    for first in range(0, len(labels), 5):
        relabelled[first] = labels[(first + 5) % len(labels)]

    def support_loss(result) -> float:
        probabilities = result.scores[np.arange(len(relabelled)), [result.classes.index(y) for y in relabelled]]
        return float(-np.mean(np.log(np.maximum(probabilities, 1e-30))))

    # Learning rates sized for version 2's logits (temperature near 1); version 3 sums four views'
    # logits under a temperature near 3.5, so the same steps move it less.
    before = client.classify(support, relabelled, support, version="2", method="finetune", steps=0)
    small = client.classify(support, relabelled, support, version="2", method="finetune", steps=25, learning_rate=0.1)
    large = client.classify(support, relabelled, support, version="2", method="finetune", steps=25, learning_rate=0.3)
    assert support_loss(before) > support_loss(small) > support_loss(large)
    assert support_loss(large) < 0.6 * support_loss(before)
    assert not np.allclose(before.scores, large.scores, atol=1e-3)


def test_prototype_scores_match_embeddings(client, episode):
    """The served head is Snell et al.'s softmax over squared distances to class means."""
    support_labels = labels_of(episode, episode.support_labels)
    support = client.embed(as_tensor(episode.support))
    queries = client.embed(as_tensor(episode.query))
    classes = list(dict.fromkeys(support_labels))
    prototypes = np.stack([support[np.array(support_labels) == c].mean(0) for c in classes])
    temperature = client.get_model()  # the config's temperature is not in the API; recover it from one score
    distances = ((queries[:, None, :] - prototypes[None]) ** 2).sum(-1)
    result = client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query))
    assert [classes[i] for i in distances.argmin(1)] == result.labels
    # log-probability differences are distance differences over one shared temperature
    log_ratio = np.log(result.scores[:, 0]) - np.log(result.scores[:, 1])
    distance_gap = distances[:, 1] - distances[:, 0]
    fitted = distance_gap / log_ratio
    assert temperature.name == "omniglot-conv4"
    np.testing.assert_allclose(fitted, np.median(fitted), rtol=1e-2)


def test_task_lifecycle(client, episode):
    support_labels = labels_of(episode, episode.support_labels)
    task = client.create_task(as_tensor(episode.support), support_labels, ttl_seconds=600)
    assert task.classes == list(dict.fromkeys(support_labels))
    remaining = task.expire_time - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(seconds=590) < remaining <= dt.timedelta(seconds=601)

    direct = client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query))
    cached = client.classify_task(task.task_id, as_tensor(episode.query))
    assert cached.classes == direct.classes and cached.labels == direct.labels
    np.testing.assert_allclose(cached.scores, direct.scores, rtol=1e-4, atol=1e-6)

    batches = [as_tensor(episode.query[:5]), as_tensor(episode.query[5:])]
    streamed = list(client.stream(task.task_id, batches))
    assert [r.labels for r in streamed] == [direct.labels[:5], direct.labels[5:]]

    client.delete_task(task.task_id)
    with pytest.raises(MetalearnError) as error:
        client.classify_task(task.task_id, as_tensor(episode.query))
    assert error.value.code == grpc.StatusCode.NOT_FOUND
    assert "deleted" in error.value.details


def test_finetune_task_matches_finetune_classify(client, episode):
    support_labels = labels_of(episode, episode.support_labels)
    task = client.create_task(as_tensor(episode.support), support_labels, method="finetune", steps=5)
    assert task.method == "finetune"
    cached = client.classify_task(task.task_id, as_tensor(episode.query))
    direct = client.classify(as_tensor(episode.support), support_labels, as_tensor(episode.query),
                             method="finetune", steps=5)
    np.testing.assert_allclose(cached.scores, direct.scores, rtol=1e-4, atol=1e-6)


def test_stream_reports_a_bad_task_with_not_found(client, episode):
    with pytest.raises(MetalearnError) as error:
        list(client.stream("no-such-task", [as_tensor(episode.query)]))
    assert error.value.code == grpc.StatusCode.NOT_FOUND


def test_embed(client, episode):
    embeddings = client.embed(as_tensor(episode.support))
    assert embeddings.shape == (len(episode.support), client.get_model().embedding_size)
    assert embeddings.dtype == np.float32 and np.isfinite(embeddings).all()
    # Same items, same embeddings, whether sent alone or in a batch.
    np.testing.assert_allclose(client.embed(as_tensor(episode.support[:1]))[0], embeddings[0], rtol=1e-4, atol=1e-5)


def test_models(client):
    models = client.list_models()
    assert [m.name for m in models] == ["omniglot-conv4", "text-minilm"]
    assert models[0].is_default and not models[1].is_default and models[0].latest_version == models[0].versions[-1]
    model = client.get_model("omniglot-conv4")
    assert list(model.input.shape) == [-1, 1, 28, 28]
    assert model.preprocessing.width == 28 and model.preprocessing.invert
    assert model.embedding_size > 0
    assert model.execution_providers[-1] == "CPUExecutionProvider"
    assert "background" in model.model_card
    assert model.default_adaptation.steps > 0 and model.default_adaptation.learning_rate > 0
    assert client.get_model().name == "omniglot-conv4"  # empty name: the default model


def test_open_set_rejects_queries_unlike_every_class(client, evaluation_data):
    from metalearn.episodes import EpisodeSampler

    episode, strangers = EpisodeSampler(evaluation_data, 5, 5, 10, seed=11).sample_open_set(unknown_ways=5)
    support, labels = as_tensor(episode.support), labels_of(episode, episode.support_labels)
    queries = as_tensor(np.concatenate([episode.query, strangers]))
    inside = len(episode.query)

    default = client.classify(support, labels, queries)
    known_scores = np.array([p.known_score for p in default.predictions])
    assert known_scores[:inside].mean() > 0.8 > 0.2 > known_scores[inside:].mean()
    rejected = np.array([p.unknown for p in default.predictions])
    assert rejected[:inside].mean() <= 0.05  # the default threshold keeps ~99% of known queries
    assert all(p.label == "" for p in default.predictions if p.unknown)
    assert all(p.top_k and abs(p.scores.sum() - 1) < 1e-4 for p in default.predictions)  # scores still there

    strict = client.classify(support, labels, queries, rejection_threshold=0.5)
    assert np.array([p.unknown for p in strict.predictions])[inside:].mean() >= 0.8
    never = client.classify(support, labels, queries, rejection_threshold=0.0)
    assert not any(p.unknown for p in never.predictions)
    assert client.get_model().default_rejection_threshold == pytest.approx(
        min(p.known_score for p in default.predictions if not p.unknown), abs=1.0)  # a probability in [0, 1]

    task = client.create_task(support, labels)
    cached = client.classify_task(task.task_id, queries, rejection_threshold=0.5)
    assert [p.unknown for p in cached.predictions] == [p.unknown for p in strict.predictions]
    client.delete_task(task.task_id)
