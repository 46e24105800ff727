"""``metalearn.v1.FewShotService``: translate, delegate to the data plane, translate back."""
from __future__ import annotations

from typing import AsyncIterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc

from metalearn_server.dataplane import DataPlane
from metalearn_server.transport import codec


class FewShotServicer(fewshot_pb2_grpc.FewShotServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def Classify(self, request: fewshot_pb2.ClassifyRequest, context: grpc.aio.ServicerContext) -> fewshot_pb2.ClassifyResponse:
        result = await self.dataplane.classify(codec.support_request(request), codec.query_request(request))
        return await codec.classification(fewshot_pb2.ClassifyResponse(
            model=result.model, model_version=result.model_version, method=codec.METHOD_ENUMS[result.method],
            distance=codec.DISTANCE_ENUMS[result.distance]), result)

    async def CreateTask(self, request: fewshot_pb2.CreateTaskRequest, context: grpc.aio.ServicerContext) -> fewshot_pb2.CreateTaskResponse:
        task = await self.dataplane.create_task(codec.support_request(request), request.ttl_seconds)
        expire_time = Timestamp()
        expire_time.FromNanoseconds(int(task.expires_at * 1e9))
        return fewshot_pb2.CreateTaskResponse(
            task_id=task.task_id, classes=task.classes, expire_time=expire_time, model=task.model.name,
            model_version=task.model.version, method=codec.METHOD_ENUMS[task.method],
            distance=codec.DISTANCE_ENUMS[task.distance])

    async def ClassifyTask(self, request: fewshot_pb2.ClassifyTaskRequest, context: grpc.aio.ServicerContext) -> fewshot_pb2.ClassifyTaskResponse:
        result = await self.dataplane.classify_task(request.task_id, codec.query_request(request), "ClassifyTask")
        return await codec.classification(fewshot_pb2.ClassifyTaskResponse(task_id=request.task_id), result)

    async def StreamClassifyTask(self, requests: AsyncIterator[fewshot_pb2.StreamClassifyTaskRequest],
                                 context: grpc.aio.ServicerContext) -> AsyncIterator[fewshot_pb2.StreamClassifyTaskResponse]:
        async for request in requests:
            result = await self.dataplane.classify_task(request.task_id, codec.query_request(request),
                                                        "StreamClassifyTask")
            yield await codec.classification(fewshot_pb2.StreamClassifyTaskResponse(task_id=request.task_id), result)

    async def DeleteTask(self, request: fewshot_pb2.DeleteTaskRequest, context: grpc.aio.ServicerContext) -> fewshot_pb2.DeleteTaskResponse:
        await self.dataplane.delete_task(request.task_id)
        return fewshot_pb2.DeleteTaskResponse()

    async def Embed(self, request: fewshot_pb2.EmbedRequest, context: grpc.aio.ServicerContext) -> fewshot_pb2.EmbedResponse:
        model, embeddings = await self.dataplane.embed(
            request.model, request.model_version, codec.items_from_proto(request.items, "items"))
        return fewshot_pb2.EmbedResponse(
            embeddings=codec.array_to_tensor(embeddings), model=model.name, model_version=model.version)
