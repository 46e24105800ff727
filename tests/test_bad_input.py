"""Every malformed request gets a precise status and a message that says what to fix,
and the server goes on serving."""
from __future__ import annotations

import grpc
import numpy as np
import pytest
from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc, model_pb2, model_pb2_grpc, tensor_pb2

from helpers import as_tensor, eventually, start_server, stop_server
from metalearn_client import Client
from metalearn_client.items import to_tensor

INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.target)
    yield fewshot_pb2_grpc.FewShotServiceStub(channel), model_pb2_grpc.ModelServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return rng.normal(size=(6, 1, 28, 28)).astype(np.float32)


def items(array: np.ndarray) -> tensor_pb2.Items:
    return tensor_pb2.Items(tensor=to_tensor(array))


def good_request(images: np.ndarray) -> fewshot_pb2.ClassifyRequest:
    return fewshot_pb2.ClassifyRequest(
        support=fewshot_pb2.SupportSet(items=items(images[:4]), labels=["a", "b", "a", "b"]),
        queries=items(images[4:]))


def mutate(images, change) -> fewshot_pb2.ClassifyRequest:
    request = good_request(images)
    change(request, images)
    return request


def set_tensor(target: tensor_pb2.Items, tensor: tensor_pb2.Tensor) -> None:
    target.Clear()
    target.tensor.CopyFrom(tensor)


CLASSIFY_CASES = {
    "empty support": (lambda r, x: r.support.items.Clear(), INVALID, "support.items is empty"),
    "empty queries": (lambda r, x: r.queries.Clear(), INVALID, "queries is empty"),
    "fewer labels than items": (lambda r, x: r.support.labels.pop(), INVALID, "4 items but 3 labels"),
    "one class only": (lambda r, x: r.support.labels.__setitem__(slice(None), ["a"] * 4), INVALID, "single class"),
    "empty label": (lambda r, x: r.support.labels.__setitem__(1, ""), INVALID, "labels[1] is empty"),
    "float64 tensor": (lambda r, x: set_tensor(r.queries, to_tensor(x[4:].astype(np.float64))), INVALID, "takes float32"),
    "missing channel axis": (lambda r, x: set_tensor(r.queries, to_tensor(x[4:, 0])), INVALID, "has shape [2, 28, 28]"),
    "wrong image size": (lambda r, x: set_tensor(r.queries, to_tensor(np.zeros((2, 1, 32, 32), np.float32))), INVALID, "[N, 1, 28, 28]"),
    "bytes do not match shape": (lambda r, x: r.queries.tensor.__setattr__("data", b"\0" * 10), INVALID, "needs 6272"),
    "dtype unset": (lambda r, x: r.queries.tensor.__setattr__("dtype", 0), INVALID, "DATA_TYPE_UNSPECIFIED"),
    "no item axis": (lambda r, x: r.queries.tensor.shape.__setitem__(slice(None), [784 * 2]), INVALID, "item count first"),
    "negative dimension": (lambda r, x: r.queries.tensor.shape.__setitem__(0, -2), INVALID, "all positive"),
    "tensor and images together": (lambda r, x: r.queries.encoded_images.append(b"x"), INVALID, "both tensor and encoded_images"),
    "NaN": (lambda r, x: set_tensor(r.queries, to_tensor(np.full((2, 1, 28, 28), np.nan, np.float32))), INVALID, "NaN or infinite"),
    "infinity": (lambda r, x: set_tensor(r.support.items, to_tensor(np.where(x[:4] > 2, np.inf, x[:4]).astype(np.float32))), INVALID, "NaN or infinite"),
    "undecodable image": (lambda r, x: (r.queries.Clear(), r.queries.encoded_images.append(b"not an image")), INVALID, "encoded_images[0] is not a readable PNG or JPEG"),
    "negative learning rate": (lambda r, x: (setattr(r, "method", fewshot_pb2.METHOD_FINETUNE), setattr(r.adaptation, "learning_rate", -1.0)), INVALID, "learning_rate is -1.0"),
    "NaN learning rate": (lambda r, x: setattr(r.adaptation, "learning_rate", float("nan")), INVALID, "learning_rate is nan"),
    "too many steps": (lambda r, x: setattr(r.adaptation, "steps", 1_000_000), INVALID, "steps is 1000000"),
    "diverging adaptation": (lambda r, x: (setattr(r, "method", fewshot_pb2.METHOD_FINETUNE), setattr(r.adaptation, "l2", 1e30)), INVALID, "fast adaptation diverged"),
    "negative l2": (lambda r, x: setattr(r.adaptation, "l2", -0.5), INVALID, "l2 is -0.5"),
    "learning rate with transductive": (lambda r, x: (setattr(r, "method", fewshot_pb2.METHOD_TRANSDUCTIVE), setattr(r.adaptation, "learning_rate", 0.1)), INVALID, "adaptation.learning_rate applies to METHOD_FINETUNE"),
    "too many transductive rounds": (lambda r, x: (setattr(r, "method", fewshot_pb2.METHOD_TRANSDUCTIVE), setattr(r.adaptation, "steps", 1_000)), INVALID, "steps is 1000"),
    "unknown method": (lambda r, x: setattr(r, "method", 9), INVALID, "method has the unknown value 9"),
    "unknown distance": (lambda r, x: setattr(r, "distance", 5), INVALID, "distance has the unknown value 5"),
    "rejection threshold above 1": (lambda r, x: setattr(r, "rejection_threshold", 1.5), INVALID, "rejection_threshold is 1.5"),
    "NaN rejection threshold": (lambda r, x: setattr(r, "rejection_threshold", float("nan")), INVALID, "rejection_threshold is nan"),
    "top_k too large": (lambda r, x: setattr(r, "top_k", 100_000), INVALID, "top_k is 100000"),
    "65 dimensions": (lambda r, x: set_tensor(r.queries, tensor_pb2.Tensor(dtype=1, shape=[1] * 65, data=b"\0" * 4)), INVALID, "has 65 dimensions"),
    "finite values that overflow the model": (lambda r, x: set_tensor(r.queries, to_tensor(np.full((2, 1, 28, 28), 3e38, np.float32))), INVALID, "overflow the model"),
    "unknown model": (lambda r, x: setattr(r, "model", "no-such-model"), NOT_FOUND, "'no-such-model' is not in the repository"),
    "unknown version": (lambda r, x: setattr(r, "model_version", "999"), NOT_FOUND, "no version '999'"),
}


@pytest.mark.parametrize("case", sorted(CLASSIFY_CASES))
def test_bad_classify_requests(stubs, images, case):
    change, code, message = CLASSIFY_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        stubs[0].Classify(mutate(images, change), timeout=10)
    assert error.value.code() == code, error.value.details()
    assert message in error.value.details()
    # ... and the server still answers a correct request.
    assert len(stubs[0].Classify(good_request(images), timeout=10).predictions) == 2


def test_bad_task_requests(stubs, images):
    fewshot = stubs[0]
    for task_id, code, message in [("", INVALID, "task_id is empty"), ("nope", NOT_FOUND, "no such task")]:
        with pytest.raises(grpc.RpcError) as error:
            fewshot.ClassifyTask(fewshot_pb2.ClassifyTaskRequest(task_id=task_id, queries=items(images)), timeout=10)
        assert error.value.code() == code and message in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        fewshot.DeleteTask(fewshot_pb2.DeleteTaskRequest(task_id="nope"), timeout=10)
    assert error.value.code() == NOT_FOUND
    with pytest.raises(grpc.RpcError) as error:
        fewshot.CreateTask(fewshot_pb2.CreateTaskRequest(
            support=fewshot_pb2.SupportSet(items=items(images), labels=["a"] * 6)), timeout=10)
    assert error.value.code() == INVALID and "single class" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:  # a task has no queries to refine with
        fewshot.CreateTask(fewshot_pb2.CreateTaskRequest(
            support=fewshot_pb2.SupportSet(items=items(images), labels=["a", "b"] * 3),
            method=fewshot_pb2.METHOD_TRANSDUCTIVE), timeout=10)
    assert error.value.code() == INVALID and "works with Classify only" in error.value.details()


def test_bad_embed_and_model_requests(stubs, images):
    fewshot, models = stubs
    with pytest.raises(grpc.RpcError) as error:
        fewshot.Embed(fewshot_pb2.EmbedRequest(items=items(images[:, 0])), timeout=10)
    assert error.value.code() == INVALID and "shape" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        fewshot.Embed(fewshot_pb2.EmbedRequest(), timeout=10)
    assert error.value.code() == INVALID and "items is empty" in error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        models.GetModel(model_pb2.GetModelRequest(name="nope"), timeout=10)
    assert error.value.code() == NOT_FOUND and "ListModels" in error.value.details()


def test_oversized_messages_are_refused_with_resource_exhausted(tmp_path, images):
    small = start_server(tmp_path, "--max-message-bytes", "100000")
    try:
        with Client(small.target) as client:
            big = np.zeros((64, 1, 28, 28), np.float32)  # 200 kB
            with pytest.raises(Exception) as error:
                client.classify(big, ["a", "b"] * 32, big[:2])
            assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len(client.classify(as_tensor(np.zeros((4, 28, 28), np.uint8)), ["a", "b"] * 2,
                                       images[:1]).predictions) == 1
    finally:
        assert stop_server(small) == 0


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` × ``height`` pixels (its pixel data is a stub): what a server that
    checks sizes before decoding sees of a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_decoding_costs_what_the_pixels_cost(server, images):
    """A 2 kB PNG of 16,777,216 × 1 pixels is within the pixel limit, and resizing it used to take about 6 s
    (the filter's cost grew with the scale factor); now five of them are answered in well under a second."""
    import io
    import time

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1 << 24, 1), 200).save(buffer, format="PNG")
    with Client(server.target) as client:
        started = time.monotonic()
        result = client.classify([buffer.getvalue()] * 2, ["a", "b"], [buffer.getvalue()] * 3)
        assert len(result.predictions) == 3 and time.monotonic() - started < 10


def test_image_size_limits(tmp_path, images):
    """Big files and decompression bombs are refused before decoding."""
    import io

    from PIL import Image

    def png(size: int) -> bytes:
        buffer = io.BytesIO()
        Image.new("L", (size, size), 255).save(buffer, format="PNG")
        return buffer.getvalue()

    strict = start_server(tmp_path, "--max-image-pixels", "10000", "--max-image-bytes", "5000",
                          "--max-request-pixels", "25000")
    try:
        with Client(strict.target) as client:
            support = [png(50)] * 4
            assert len(client.classify(support, ["a", "b"] * 2, [png(100)]).predictions) == 1  # 10,000 pixels: fine
            for size in (101, 20_000):  # the same cause gets the same message, however far over the limit
                with pytest.raises(Exception) as error:
                    client.classify(support, ["a", "b"] * 2, [png_header(size, size)])
                assert error.value.code == INVALID, error.value.details
                assert f"{size}×{size} pixels, more than the limit of 10000" in error.value.details
                assert "downscale it" in error.value.details
            with pytest.raises(Exception) as error:  # 4 × 2,500 + 2 × 10,000 pixels in all
                client.classify(support, ["a", "b"] * 2, [png(100), png(100)])
            assert error.value.code == INVALID and "past 25000 pixels in all" in error.value.details
            noisy = io.BytesIO()
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 90), dtype=np.uint8)).save(noisy, "PNG")
            with pytest.raises(Exception) as error:
                client.classify(support, ["a", "b"] * 2, [noisy.getvalue()])
            assert error.value.code == INVALID and "more than the limit of 5000" in error.value.details
    finally:
        stop_server(strict)


def test_no_answer_carries_non_finite_numbers(stubs, images):
    """Finite inputs of ±3e38 overflow the backbone: refused, where Embed used to return NaN embeddings with OK."""
    fewshot = stubs[0]
    huge = items(np.where(images > 0, 3e38, -3e38).astype(np.float32))
    task = fewshot.CreateTask(fewshot_pb2.CreateTaskRequest(support=good_request(images).support), timeout=10)
    for call, request in [
        (fewshot.Embed, fewshot_pb2.EmbedRequest(items=huge)),
        (fewshot.ClassifyTask, fewshot_pb2.ClassifyTaskRequest(task_id=task.task_id, queries=huge)),
        (fewshot.CreateTask, fewshot_pb2.CreateTaskRequest(support=fewshot_pb2.SupportSet(
            items=huge, labels=["a", "b"] * 3))),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == INVALID and "overflow the model" in error.value.details()


def test_long_caller_strings_are_cut_in_messages(server, stubs, images):
    """A 1 MB task id or model name is echoed as a short prefix, so the caller sees the real status (the whole
    string pushed the message past the client's 16 kB metadata limit: RESOURCE_EXHAUSTED instead)."""
    from metalearn.kserve.v2 import grpc_service_pb2 as kserve
    from metalearn.kserve.v2 import grpc_service_pb2_grpc as kserve_grpc

    from test_metrics import scrape, value

    fewshot, models = stubs
    long = "x" * (1 << 20)
    before = value(scrape(server), "metalearn_requests_total", code="NOT_FOUND")
    calls = [
        (fewshot.ClassifyTask, fewshot_pb2.ClassifyTaskRequest(task_id=long, queries=items(images))),
        (fewshot.DeleteTask, fewshot_pb2.DeleteTaskRequest(task_id=long)),
        (fewshot.Embed, fewshot_pb2.EmbedRequest(model=long, items=items(images))),
        (fewshot.Embed, fewshot_pb2.EmbedRequest(model_version=long, items=items(images))),
        (models.GetModel, model_pb2.GetModelRequest(name=long)),
    ]
    with grpc.insecure_channel(server.target) as channel:
        calls.append((kserve_grpc.GRPCInferenceServiceStub(channel).ModelMetadata,
                      kserve.ModelMetadataRequest(name=long)))
        for call, request in calls:
            with pytest.raises(grpc.RpcError) as error:
                call(request, timeout=10)
            assert error.value.code() == NOT_FOUND, error.value.details()
            assert "(1048576 characters)" in error.value.details() and len(error.value.details()) < 1000
    # The server counts a call as it finishes it, which may be just after the caller has its answer.
    eventually(lambda: value(scrape(server), "metalearn_requests_total", code="NOT_FOUND") - before == len(calls),
               seconds=5)


TEXT_MODEL = "text-minilm"


def good_text_request() -> fewshot_pb2.ClassifyRequest:
    return fewshot_pb2.ClassifyRequest(
        model=TEXT_MODEL,
        support=fewshot_pb2.SupportSet(items=tensor_pb2.Items(texts=["pay my bill", "book a flight", "bill due date",
                                                                     "flight to rome"]),
                                       labels=["bills", "travel", "bills", "travel"]),
        queries=tensor_pb2.Items(texts=["when is my bill due", "fly to paris"]))


def mutate_text(change) -> fewshot_pb2.ClassifyRequest:
    request = good_text_request()
    change(request)
    return request


TEXT_CASES = {
    "empty text": (lambda r: r.queries.texts.__setitem__(1, ""), "queries.texts[1] is empty"),
    "blank text": (lambda r: r.support.items.texts.__setitem__(2, " \n\t"), "support.items.texts[2] is only whitespace"),
    "oversize text": (lambda r: r.queries.texts.__setitem__(0, "é" * 2049),
                      "queries.texts[0] has 4098 bytes of UTF-8, more than the limit of 4096 per text; the model "
                      "reads only its first 32 tokens"),
    "image tensor to the text model": (lambda r: (set_tensor(r.support.items, to_tensor(np.zeros((4, 1, 28, 28), np.float32))),
                                                  set_tensor(r.queries, to_tensor(np.zeros((2, 1, 28, 28), np.float32)))),
                                       "support.items are a tensor, but model text-minilm takes texts"),
    "image files to the text model": (lambda r: (r.support.items.Clear(), r.support.items.encoded_images.extend([b"x"] * 4),
                                                 r.queries.Clear(), r.queries.encoded_images.append(b"x")),
                                      "support.items are encoded images, but model text-minilm takes texts"),
    "texts and a tensor in one Items": (lambda r: r.queries.tensor.CopyFrom(to_tensor(np.zeros((2, 3), np.float32))),
                                        "queries sets both tensor and texts; send one of them"),
    "mixed kinds in one request": (lambda r: set_tensor(r.queries, to_tensor(np.zeros((2, 1, 28, 28), np.float32))),
                                   "support.items are texts and queries are a tensor; one request takes one kind of "
                                   "item (model text-minilm takes texts"),
    "texts to the image model": (lambda r: r.__setattr__("model", "omniglot-conv4"),
                                 "support.items are texts, but model omniglot-conv4 takes images (Items.tensor or "
                                 "Items.encoded_images)"),
}


@pytest.mark.parametrize("case", sorted(TEXT_CASES))
def test_bad_text_requests(stubs, case):
    change, message = TEXT_CASES[case]
    with pytest.raises(grpc.RpcError) as error:
        stubs[0].Classify(mutate_text(change), timeout=10)
    assert error.value.code() == INVALID, error.value.details()
    assert message in error.value.details()
    assert [p.label for p in stubs[0].Classify(good_text_request(), timeout=10).predictions] == ["bills", "travel"]


def test_bad_text_embed_and_task_requests(stubs):
    fewshot = stubs[0]
    task = fewshot.CreateTask(fewshot_pb2.CreateTaskRequest(model=TEXT_MODEL, support=good_text_request().support),
                              timeout=10)
    for call, request, message in [
        (fewshot.Embed, fewshot_pb2.EmbedRequest(items=tensor_pb2.Items(texts=["a text"])),
         "items are texts, but model omniglot-conv4 takes images"),
        (fewshot.Embed, fewshot_pb2.EmbedRequest(model=TEXT_MODEL, items=tensor_pb2.Items(texts=["ok", ""])),
         "items.texts[1] is empty"),
        (fewshot.ClassifyTask, fewshot_pb2.ClassifyTaskRequest(task_id=task.task_id, queries=tensor_pb2.Items(
            encoded_images=[b"x"])), "queries are encoded images, but model text-minilm takes texts"),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == INVALID and message in error.value.details(), error.value.details()
