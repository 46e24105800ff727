"""The benchmark's KServe v2 load: one episode, sent with the unmodified ``tritonclient[grpc]`` by
closed-loop clients, to any v2 server (metalearn's endpoint, or the Triton peer of
:mod:`metalearn.peer_server`), so both are driven by the very same client code and requests.

    python -m metalearn.tritonclient_load TARGET MODEL EPISODE.npz --concurrency C --seconds S --warmup W
    python -m metalearn.tritonclient_load TARGET MODEL EPISODE.npz --scores

Runs in ``.venv-peer`` (tritonclient pins an older protobuf than metalearn's stubs); it imports only
:func:`metalearn.benchmark.closed_loop` of metalearn, which needs NumPy alone.  EPISODE.npz holds
``support``, ``labels`` and ``queries``; the request asks for SCORES only, which both servers answer.
Prints one JSON object: the loop's latencies, answers in the window, window and elapsed seconds
(or, with ``--scores``, one answer's scores).
"""
from __future__ import annotations

import argparse
import json
import threading
from dataclasses import asdict

import numpy as np
import tritonclient.grpc as triton

from metalearn.benchmark import closed_loop


def episode_request(path: str) -> tuple[list, list]:
    episode = np.load(path)
    inputs = [triton.InferInput("SUPPORT", list(episode["support"].shape), "FP32"),
              triton.InferInput("SUPPORT_LABELS", [len(episode["labels"])], "BYTES"),
              triton.InferInput("QUERY", list(episode["queries"].shape), "FP32")]
    inputs[0].set_data_from_numpy(episode["support"])
    inputs[1].set_data_from_numpy(np.array([str(label).encode() for label in episode["labels"]], dtype=np.object_))
    inputs[2].set_data_from_numpy(episode["queries"])
    return inputs, [triton.InferRequestedOutput("SCORES")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target")
    parser.add_argument("model")
    parser.add_argument("episode")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--scores", action="store_true", help="print one answer's SCORES instead of measuring")
    args = parser.parse_args()
    inputs, outputs = episode_request(args.episode)
    local = threading.local()  # one client (one channel) per closed-loop thread

    def call() -> np.ndarray:
        if not hasattr(local, "client"):
            local.client = triton.InferenceServerClient(url=args.target)
        return local.client.infer(args.model, inputs, outputs=outputs).as_numpy("SCORES")

    if args.scores:
        print(json.dumps({"scores": call().tolist()}))
        return
    print(json.dumps(asdict(closed_loop(call, args.concurrency, args.seconds, args.warmup))))


if __name__ == "__main__":
    main()
