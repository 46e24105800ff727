"""The Python client's edges, as a newcomer meets them: one path where a list was meant, labels as one
string, a server that is not there, and image files turned into model-ready arrays on the caller's side."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import grpc
import numpy as np
import pytest
from PIL import Image

from helpers import as_png, free_port, labels_of
from metalearn_client import Client, MetalearnError, load_images


def write_pngs(tmp_path, images: np.ndarray, prefix: str) -> list[str]:
    paths = []
    for index, image in enumerate(images):
        path = tmp_path / f"{prefix}-{index}.png"
        path.write_bytes(as_png(image))
        paths.append(str(path))
    return paths


def test_a_single_path_or_label_string_is_refused_not_iterated(client, episode, tmp_path):
    """Before: "one.png" was sent as seven one-character file names, "aabb" as four labels."""
    support = write_pngs(tmp_path, episode.support, "support")
    labels = labels_of(episode, episode.support_labels)
    query = support[0]
    for single in (query, tmp_path / "q.png", b"\x89PNG..."):
        with pytest.raises(TypeError, match=r"queries must be a sequence, not a single .*wrap one in a list"):
            client.classify(support, labels, single)
    with pytest.raises(TypeError, match="support must be a sequence"):
        client.create_task(query, labels)
    with pytest.raises(TypeError, match="labels must be a sequence, not a single str"):
        client.classify(support[:4], "aabb", [query])
    with pytest.raises(TypeError, match="queries must be a sequence"):
        client.classify_task("some-task", query)
    with pytest.raises(TypeError, match="items must be a sequence"):
        client.embed(query)
    assert len(client.classify(support, labels, [query]).predictions) == 1  # the list form works


def test_a_connection_failure_says_what_to_check():
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    with Client(target, retries=0, timeout=5) as client:
        with pytest.raises(MetalearnError) as error:
            client.health()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE
    assert f"cannot reach a metalearn server at {target}" in str(error.value)
    assert "check the address (host:port) and that the server is running" in error.value.details


def test_load_images_gives_what_the_server_decodes(client, episode, tmp_path):
    """The README's arrays: files turned into the model's input with GetModel's preprocessing embed exactly as
    the same files sent encoded, and classify the same."""
    paths = write_pngs(tmp_path, episode.query, "query")
    jpeg = io.BytesIO()
    Image.open(paths[0]).convert("RGB").resize((400, 300)).save(jpeg, format="JPEG")  # a photo-sized colour JPEG
    sources = [*paths, jpeg.getvalue()]
    model = client.get_model()
    arrays = load_images(sources, model)
    assert arrays.dtype == np.float32 and arrays.shape == (len(sources), *model.input.shape[1:])
    np.testing.assert_allclose(client.embed(arrays), client.embed(sources), rtol=1e-5, atol=1e-5)

    support_paths = write_pngs(tmp_path, episode.support, "support")
    labels = labels_of(episode, episode.support_labels)
    task = client.create_task(load_images(support_paths, model), labels)  # the README's snippet
    streamed = list(client.stream(task.task_id, [arrays[:5], arrays[5:len(paths)]]))
    encoded = client.classify(support_paths, labels, paths)
    assert streamed[0].labels + streamed[1].labels == encoded.labels
    np.testing.assert_allclose(np.concatenate([r.scores for r in streamed]), encoded.scores, atol=1e-5)


def test_load_images_without_pillow_says_which_extra_to_install(tmp_path):
    shadow = tmp_path / "shadow" / "PIL"  # Pillow not installed: importing it fails as it would then
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'PIL'\", name='PIL')\n")
    code = ("from metalearn.v1 import model_pb2; from metalearn_client import load_images\n"
            "try:\n    load_images([b'x'], model_pb2.GetModelResponse())\nexcept ImportError as error:\n    print(error)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(tmp_path / "shadow")})
    assert "pip install 'metalearn-client[images]'" in result.stdout, result.stderr
