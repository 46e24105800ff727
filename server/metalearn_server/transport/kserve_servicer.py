"""``inference.GRPCInferenceService``: the KServe v2 / Open Inference Protocol, beside metalearn.v1.

Thin, like the native servicers: :mod:`~metalearn_server.transport.kserve_codec`
translates, the data plane does the work (the same ``classify`` and ``embed``
as ``Classify`` and ``Embed``, so both protocols give the same answers).
"""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Callable

import grpc
from metalearn.kserve.v2 import grpc_service_pb2 as pb
from metalearn.kserve.v2 import grpc_service_pb2_grpc

from metalearn_server.dataplane import DataPlane
from metalearn_server.errors import NotFound
from metalearn_server.transport import kserve_codec as codec


def server_version() -> str:
    try:
        return version("metalearn-server")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class KServeServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, ready: Callable[[], bool]) -> None:
        """``ready`` turns false when the server begins to drain, as health does."""
        self.dataplane, self.ready = dataplane, ready

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready() and bool(self.dataplane.models()[0]))

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> pb.ModelReadyResponse:
        name, _ = codec.split_model_name(request.name)
        try:
            self.dataplane.model(name, request.version)
        except NotFound:  # "is it ready?" has an answer for a model that is not there: no
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.ready())

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="metalearn", version=server_version())

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        name, embed = codec.split_model_name(request.name)
        model = self.dataplane.model(name, request.version)
        return codec.model_metadata(model, self.dataplane.model_versions(model), embed)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        name, embed = codec.split_model_name(request.model_name)
        if embed:
            model, embeddings = await self.dataplane.embed(name, request.model_version, codec.embed_items(request))
            return codec.infer_response(request, model.name + codec.EMBED_SUFFIX, model.version,
                                        {"EMBEDDINGS": codec.float_output(embeddings)})
        result = await self.dataplane.classify(*codec.classify_request(request, name))
        return codec.infer_response(request, result.model, result.model_version, codec.classification_outputs(result))
