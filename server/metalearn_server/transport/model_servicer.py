"""``metalearn.v1.ModelService``: what the repository serves, as the client sees it."""
from __future__ import annotations

import grpc
from metalearn.v1 import fewshot_pb2, model_pb2, model_pb2_grpc, tensor_pb2

from metalearn_server.dataplane import DataPlane
from metalearn_server.transport import codec

INPUT_DTYPES = {"float32": tensor_pb2.DATA_TYPE_FLOAT32}
ITEM_KINDS = {"image": model_pb2.ITEM_KIND_IMAGE, "text": model_pb2.ITEM_KIND_TEXT}


class ModelServicer(model_pb2_grpc.ModelServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    async def ListModels(self, request: model_pb2.ListModelsRequest, context: grpc.aio.ServicerContext) -> model_pb2.ListModelsResponse:
        entries, default = self.dataplane.models()
        return model_pb2.ListModelsResponse(models=[
            model_pb2.ModelSummary(name=entry.name, versions=entry.ordered_versions(),
                                   latest_version=entry.latest.version, is_default=entry.name == default)
            for entry in entries
        ])

    async def GetModel(self, request: model_pb2.GetModelRequest, context: grpc.aio.ServicerContext) -> model_pb2.GetModelResponse:
        model = self.dataplane.model(request.name, request.version)
        config = model.config
        pre, adaptation = config.preprocessing, config.default_adaptation
        if config.text is None:
            items = {"input": model_pb2.TensorSpec(name=config.input_name, dtype=INPUT_DTYPES[config.input_dtype],
                                                   shape=[-1, *config.input_shape]),
                     "preprocessing": model_pb2.Preprocessing(color_mode=pre.color_mode, width=pre.width,
                                                              height=pre.height, invert=pre.invert, mean=pre.mean,
                                                              std=pre.std)}
        else:
            items = {"text": model_pb2.TextInput(max_tokens=config.text.max_tokens, truncates=True,
                                                 max_bytes=self.dataplane.limits.max_text_bytes)}
        return model_pb2.GetModelResponse(
            name=model.name,
            version=model.version,
            versions=self.dataplane.model_versions(model),
            item_kind=ITEM_KINDS[config.kind],
            **items,
            embedding_size=config.embedding_size,
            supported_methods=list(codec.METHOD_ENUMS.values()),
            default_method=codec.METHOD_ENUMS[config.default_method],
            default_distance=codec.DISTANCE_ENUMS[config.default_distance],
            default_adaptation=fewshot_pb2.Adaptation(steps=adaptation.steps, learning_rate=adaptation.learning_rate,
                                                      l2=adaptation.l2),
            execution_providers=model.providers,
            model_card=model.model_card,
            default_rejection_threshold=config.open_set[config.default_distance].threshold,
            default_refinement_steps=config.default_refinement_steps,
        )
