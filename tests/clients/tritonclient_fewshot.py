"""Drives metalearn's KServe v2 service with the unmodified ``tritonclient[grpc]`` from PyPI.

Runs in its own virtual environment (``.venv-triton``: tritonclient pins a
protobuf older than metalearn's stubs need), so it imports nothing of metalearn.

    python tritonclient_fewshot.py HOST:PORT MODEL EPISODE.npz

EPISODE.npz holds ``support``, ``labels`` and ``queries``; the answer is one JSON object on stdout.
"""
import json
import sys

import numpy as np
import tritonclient.grpc as triton


def main(target: str, model: str, episode_path: str) -> None:
    episode = np.load(episode_path)
    client = triton.InferenceServerClient(url=target)
    server = client.get_server_metadata(as_json=True)
    metadata = client.get_model_metadata(model, as_json=True)
    embed_metadata = client.get_model_metadata(model + ".embed", as_json=True)

    inputs = [triton.InferInput("SUPPORT", list(episode["support"].shape), "FP32"),
              triton.InferInput("SUPPORT_LABELS", [len(episode["labels"])], "BYTES"),
              triton.InferInput("QUERY", list(episode["queries"].shape), "FP32")]
    inputs[0].set_data_from_numpy(episode["support"])
    inputs[1].set_data_from_numpy(np.array([label.encode() for label in episode["labels"]], dtype=np.object_))
    inputs[2].set_data_from_numpy(episode["queries"])
    outputs = [triton.InferRequestedOutput(name) for name in ("LABELS", "SCORES", "CLASSES")]
    result = client.infer(model, inputs, outputs=outputs, request_id="triton-1",
                          parameters={"method": "finetune", "adaptation_steps": 5})

    items = triton.InferInput("ITEMS", list(episode["queries"].shape), "FP32")
    items.set_data_from_numpy(episode["queries"])
    embeddings = client.infer(model + ".embed", [items]).as_numpy("EMBEDDINGS")

    response = result.get_response(as_json=True)
    print(json.dumps({
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_model_ready": client.is_model_ready("no-such-model"),
        "server": server,
        "metadata": metadata,
        "embed_metadata": embed_metadata,
        "id": response["id"],
        "model_version": response["model_version"],
        "output_order": [output["name"] for output in response["outputs"]],
        "labels": [label.decode() for label in result.as_numpy("LABELS")],
        "classes": [label.decode() for label in result.as_numpy("CLASSES")],
        "scores": result.as_numpy("SCORES").tolist(),
        "embeddings": embeddings.tolist(),
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
