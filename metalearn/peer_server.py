"""The benchmark's peer: the served model version's ONNX backbone and ProtoNet head, in Triton Inference
Server itself, through PyTriton (``nvidia-pytriton`` bundles a Triton build and serves a Python callable).

    .venv-peer/bin/python metalearn/peer_server.py VERSION_FOLDER --grpc-port P --http-port P --metrics-port P

Runs in its own venv (``.venv-peer``: PyTriton pins its own NumPy and tritonclient) and imports nothing of
metalearn.  The callable does what metalearn's prototype path does, on the same graphs with ONNX Runtime:
embed support and queries in one backbone call, prototypes (``prototype_head.onnx``), then scores
(``linear_head.onnx``) at the version's temperature.  It takes the v2 tensors metalearn takes (SUPPORT,
SUPPORT_LABELS, QUERY) and answers SCORES, so one tritonclient request serves both servers.  Batching across
requests is off, as in metalearn (``max_batch_size`` 0): each request is one episode.
"""
from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


class ProtoNet:
    def __init__(self, version: Path, distance: str) -> None:
        config = json.loads((version / "config.json").read_text())
        self.input_name, self.cosine = config["input"]["name"], distance == "cosine"
        self.temperature = np.array(config["temperature"][distance], np.float32)
        self.backbone = self._session(version / config["backbone"], 0)
        self.prototypes = self._session(version / config["heads"]["prototype"], 1)
        self.linear = self._session(version / "linear_head.onnx", 1)
        self.item_shape = tuple(config["input"]["shape"])

    @staticmethod
    def _session(path: Path, threads: int) -> ort.InferenceSession:
        """As metalearn's: full graph optimisation, ONNX Runtime's thread choice for the backbone, one for heads."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    def scores(self, support: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> np.ndarray:
        classes, targets = np.unique(labels, return_inverse=True)
        onehot = np.eye(len(classes), dtype=np.float32)[targets.ravel()]
        embeddings = self.backbone.run(None, {self.input_name: np.concatenate([support, queries])})[0]
        cosine = np.array(self.cosine)
        weight, bias = self.prototypes.run(None, {"support": embeddings[: len(support)], "support_onehot": onehot,
                                                  "cosine": cosine})
        probabilities, _ = self.linear.run(None, {"queries": embeddings[len(support):], "weight": weight,
                                                  "bias": bias, "cosine": cosine, "temperature": self.temperature})
        return probabilities

    def infer(self, requests: list) -> list[dict[str, np.ndarray]]:
        return [{"SCORES": self.scores(r["SUPPORT"], r["SUPPORT_LABELS"], r["QUERY"])} for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("version", type=Path, help="a model version folder of metalearn's repository")
    parser.add_argument("--model-name", default="omniglot-conv4")
    parser.add_argument("--distance", default="euclidean")
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    args = parser.parse_args()
    # PyTriton stops Triton and cleans its workspace when serve() is interrupted; make SIGTERM do that too, and
    # SIGINT even where a background shell started this with it ignored.
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, signal.default_int_handler)
    model = ProtoNet(args.version, args.distance)
    item = (-1, *model.item_shape)
    with Triton(config=TritonConfig(grpc_address="127.0.0.1", http_address="127.0.0.1", grpc_port=args.grpc_port,
                                    http_port=args.http_port, metrics_port=args.metrics_port)) as triton:
        triton.bind(model_name=args.model_name, infer_func=model.infer,
                    inputs=[Tensor(name="SUPPORT", dtype=np.float32, shape=item),
                            Tensor(name="SUPPORT_LABELS", dtype=np.bytes_, shape=(-1,)),
                            Tensor(name="QUERY", dtype=np.float32, shape=item)],
                    outputs=[Tensor(name="SCORES", dtype=np.float32, shape=(-1, -1))],
                    config=ModelConfig(batching=False))
        try:
            triton.serve()
        except KeyboardInterrupt:  # asked to stop; leaving the block stops Triton
            pass


if __name__ == "__main__":
    main()
