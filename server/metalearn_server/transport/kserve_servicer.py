"""``inference.GRPCInferenceService``: the KServe v2 / Open Inference Protocol, beside metalearn.v1.

Thin, like the native servicers: :mod:`~metalearn_server.transport.kserve_codec`
translates, the data plane does the work (the same ``classify`` and ``embed``
as ``Classify`` and ``Embed``, so both protocols give the same answers).
"""
from __future__ import annotations

from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import AsyncIterator, Callable

import grpc
from metalearn.kserve.v2 import grpc_service_pb2 as pb
from metalearn.kserve.v2 import grpc_service_pb2_grpc

from metalearn_server.dataplane import DataPlane
from metalearn_server.errors import InvalidArgument, MetalearnError, NotFound, excerpt
from metalearn_server.observability.statistics import CLASSIFY, EMBED
from metalearn_server.transport import kserve_codec as codec


#: The protocol extensions served in full (Triton's names). RepositoryIndex is served, but the rest of
#: "model_repository" (load, unload) is not, so that one is not claimed.
EXTENSIONS = ("model_configuration", "parameters", "statistics")


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
        return pb.ServerMetadataResponse(name="metalearn", version=server_version(), extensions=EXTENSIONS)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> pb.ModelMetadataResponse:
        name, embed = codec.split_model_name(request.name)
        model = self.dataplane.model(name, request.version)
        return codec.model_metadata(model, self.dataplane.model_versions(model), embed)

    async def ModelConfig(self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext) -> pb.ModelConfigResponse:
        name, embed = codec.split_model_name(request.name)
        return codec.model_config(self.dataplane.model(name, request.version), embed)

    async def ModelStatistics(self, request: pb.ModelStatisticsRequest,
                              context: grpc.aio.ServicerContext) -> pb.ModelStatisticsResponse:
        if request.version and not request.name:
            raise InvalidArgument(f"version {excerpt(request.version)} without a model name; name the model, "
                                  "or leave both empty for every model")
        name, embed = codec.split_model_name(request.name)
        views = [embed] if request.name else [False, True]
        return codec.model_statistics([(model, view, self.dataplane.statistics(model, EMBED if view else CLASSIFY))
                                       for model in self.dataplane.loaded(name, request.version) for view in views])

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest,
                              context: grpc.aio.ServicerContext) -> pb.RepositoryIndexResponse:
        if request.repository_name:
            raise NotFound(f"repository {excerpt(request.repository_name)} is not known; metalearn serves one "
                           "repository: leave repository_name empty")
        return codec.repository_index(self.dataplane.version_states(), request.ready)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> pb.ModelInferResponse:
        return await self._infer(request)

    async def ModelStreamInfer(self, requests: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Each request in turn, as ModelInfer; one that fails answers its error and the stream goes on."""
        async for request in requests:
            try:
                yield pb.ModelStreamInferResponse(infer_response=await self._infer(request))
            except MetalearnError as error:
                yield pb.ModelStreamInferResponse(error_message=str(error))

    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        name, embed = codec.split_model_name(request.model_name)
        outputs = codec.requested_outputs(request, embed)
        if embed:
            model, embeddings = await self.dataplane.embed(name, request.model_version, codec.embed_items(request))
            return codec.infer_response(request, model.name + codec.EMBED_SUFFIX, model.version, outputs,
                                        {"EMBEDDINGS": partial(codec.float_output, embeddings)})
        result = await self.dataplane.classify(*codec.classify_request(request, name))
        return codec.infer_response(request, result.model, result.model_version, outputs,
                                    codec.classification_outputs(result))
