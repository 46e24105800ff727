"""Asks metalearn what Triton's own tools ask, with the unmodified ``tritonclient[grpc]`` from PyPI:
server metadata, model configuration, the repository index and inference statistics.

Runs in ``.venv-triton`` (see tritonclient_fewshot.py), imports nothing of metalearn.

    python tritonclient_tools.py HOST:PORT MODEL EPISODE.npz CALLS
    python tritonclient_tools.py HOST:PORT MODEL EPISODE.npz stream

Makes CALLS inferences on MODEL and CALLS on MODEL.embed with the episode (support, labels, queries),
reading the statistics before and after; or ``stream``: a good, a bad and an embedding request on one
ModelStreamInfer stream, beside the same good one unary.  The answers are one JSON object on stdout.
"""
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton


def fewshot_inputs(episode) -> list:
    inputs = [triton.InferInput("SUPPORT", list(episode["support"].shape), "FP32"),
              triton.InferInput("SUPPORT_LABELS", [len(episode["labels"])], "BYTES"),
              triton.InferInput("QUERY", list(episode["queries"].shape), "FP32")]
    inputs[0].set_data_from_numpy(episode["support"])
    inputs[1].set_data_from_numpy(np.array([label.encode() for label in episode["labels"]], dtype=np.object_))
    inputs[2].set_data_from_numpy(episode["queries"])
    return inputs


def stream(client: triton.InferenceServerClient, model: str, episode) -> dict:
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    items = triton.InferInput("ITEMS", list(episode["queries"].shape), "FP32")
    items.set_data_from_numpy(episode["queries"])
    client.async_stream_infer(model, fewshot_inputs(episode), request_id="good")
    client.async_stream_infer(model, fewshot_inputs(episode), request_id="bad", parameters={"method": "magic"})
    client.async_stream_infer(model + ".embed", [items], request_id="embed")
    replies = [answers.get(timeout=60) for _ in range(3)]
    client.stop_stream()
    unary = client.infer(model, fewshot_inputs(episode))
    return {
        "replies": [{"id": result.get_response().id if result else None, "error": str(error) if error else None,
                     "labels": [l.decode() for l in result.as_numpy("LABELS")] if result and result.as_numpy("LABELS")
                     is not None else None} for result, error in replies],
        "unary_labels": [label.decode() for label in unary.as_numpy("LABELS")],
    }


def main(target: str, model: str, episode_path: str, calls: str) -> None:
    episode = np.load(episode_path)
    client = triton.InferenceServerClient(url=target)
    if calls == "stream":
        print(json.dumps(stream(client, model, episode)))
        return
    before = client.get_inference_statistics(model, as_json=True)
    items = triton.InferInput("ITEMS", list(episode["queries"].shape), "FP32")
    items.set_data_from_numpy(episode["queries"])
    for _ in range(int(calls)):
        client.infer(model, fewshot_inputs(episode))
        client.infer(model + ".embed", [items])
    try:
        client.infer(model, fewshot_inputs(episode), parameters={"method": "magic"})
    except triton.InferenceServerException as error:
        bad_call = error.status()
    print(json.dumps({
        "server": client.get_server_metadata(as_json=True),
        "config": client.get_model_config(model, as_json=True),
        "embed_config": client.get_model_config(model + ".embed", as_json=True),
        "metadata": client.get_model_metadata(model, as_json=True),
        "embed_metadata": client.get_model_metadata(model + ".embed", as_json=True),
        "index": client.get_model_repository_index(as_json=True),
        "statistics_before": before,
        "statistics": client.get_inference_statistics(model, as_json=True),
        "embed_statistics": client.get_inference_statistics(model + ".embed", as_json=True),
        "all_statistics": client.get_inference_statistics(as_json=True),
        "bad_call": bad_call,
    }))


if __name__ == "__main__":
    main(*sys.argv[1:])
