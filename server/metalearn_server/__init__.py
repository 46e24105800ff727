"""metalearn's gRPC server: few-shot inference on ONNX Runtime (see :mod:`metalearn_server.app`)."""
