"""KServe v2 (Open Inference Protocol) tensors and parameters ↔ the data plane's plain values.

How metalearn's models look to a v2 client (tritonclient, kserve, …):

Model ``<name>``: few-shot classification, platform ``metalearn_fewshot``.

=================  =========  =======================  ==================================================
tensor             datatype   shape                    meaning
=================  =========  =======================  ==================================================
``SUPPORT``        FP32       ``[n, *item shape]``     the labelled examples (input); BYTES ``[n]`` of
                                                       UTF-8 texts for a text model
``SUPPORT_LABELS`` BYTES      ``[n]``                  one UTF-8 class label per support item (input)
``QUERY``          FP32       ``[m, *item shape]``     the items to classify (input); BYTES for texts
``SCORES``         FP32       ``[m, classes]``         probabilities; columns in ``CLASSES`` order (output)
``CLASSES``        BYTES      ``[classes]``            labels in order of first appearance (output)
``LABELS``         BYTES      ``[m]``                  best class per query, empty if rejected (output)
``KNOWN_SCORE``    FP32       ``[m]``                  open-set score; below the threshold is unknown
=================  =========  =======================  ==================================================

Request parameters carry what metalearn.v1 puts in fields: ``method`` and
``distance`` (string), ``adaptation_steps`` (int64), ``adaptation_learning_rate``,
``adaptation_l2`` and ``rejection_threshold`` (double).  Absent means the model's default.

Model ``<name>.embed``: the backbone alone, platform ``onnxruntime_onnx``:
``ITEMS`` FP32 ``[n, *item shape]`` (BYTES ``[n]`` for a text model) in, ``EMBEDDINGS`` FP32 ``[n, embedding size]`` out.

``ModelConfig`` describes both in Triton's terms: the same tensors (BYTES is ``TYPE_STRING``),
``max_batch_size`` 0, every version served.  ``ModelStatistics`` reports each separately, per version.

Tensor bytes come either as ``raw_input_contents`` (what tritonclient sends) or as
typed ``contents``; answers always use ``raw_output_contents``.  Raw tensors
are read with ``np.frombuffer``, without a copy, as in the native codec.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
from metalearn.kserve.v2 import grpc_service_pb2 as pb
from metalearn.kserve.v2 import model_config_pb2 as config_pb

from metalearn_server import validation
from metalearn_server.errors import InvalidArgument, excerpt
from metalearn_server.execution.model import FewShotModel
from metalearn_server.observability.statistics import Duration, VersionStatistics
from metalearn_server.requests import AdaptationRequest, Classification, Items, QueryRequest, SupportRequest

EMBED_SUFFIX = ".embed"
FEWSHOT_PLATFORM = "metalearn_fewshot"
EMBED_PLATFORM = "onnxruntime_onnx"
EMBED_BACKEND = "onnxruntime"

#: Protocol datatypes of numeric tensors, little-endian as the protocol requires.
NUMERIC = {
    "BOOL": np.dtype("?"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"), "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
#: Which typed ``contents`` field carries each datatype.
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "FP16": "fp32_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
DATATYPE = {dtype: name for name, dtype in NUMERIC.items()}

#: Request parameters and the protobuf ``oneof`` member each must use.
PARAMETERS = {
    "method": "string_param", "distance": "string_param", "adaptation_steps": "int64_param",
    "adaptation_learning_rate": "double_param", "adaptation_l2": "double_param", "rejection_threshold": "double_param",
}

FEWSHOT_INPUTS = ("SUPPORT", "SUPPORT_LABELS", "QUERY")
#: Parameters Triton's clients add on their own (perf_analyzer always does): asking a decoupled model for an
#: empty last response.  metalearn's models answer once per request, so, as Triton does for such models, it is
#: accepted and changes nothing.
TRITON_PARAMETERS = frozenset({"triton_enable_empty_final_response"})


@dataclass(frozen=True)
class Tensor:
    """One input or output of a v2 model, as its metadata shows it (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


#: The few-shot model's outputs, the same for every model; the backbone model's one output is EMBEDDINGS.
FEWSHOT_OUTPUT_TENSORS = (Tensor("SCORES", "FP32", (-1, -1)), Tensor("CLASSES", "BYTES", (-1,)),
                          Tensor("LABELS", "BYTES", (-1,)), Tensor("KNOWN_SCORE", "FP32", (-1,)))
FEWSHOT_OUTPUTS = tuple(tensor.name for tensor in FEWSHOT_OUTPUT_TENSORS)
EMBED_OUTPUTS = ("EMBEDDINGS",)


@dataclass(frozen=True)
class Output:
    """One output tensor, encoded: protocol datatype, shape and raw bytes."""

    datatype: str
    shape: tuple[int, ...]
    raw: bytes


def split_model_name(name: str) -> tuple[str, bool]:
    """``"omniglot-conv4.embed"`` → ``("omniglot-conv4", True)``: the repository model, and whether the backbone alone."""
    if name.endswith(EMBED_SUFFIX):
        return name[: -len(EMBED_SUFFIX)], True
    return name, False


# -- metadata -----------------------------------------------------------------------------------
def _tensors(model: FewShotModel, embed: bool) -> tuple[list[Tensor], list[Tensor]]:
    """The inputs and outputs of the v2 model, which ModelMetadata and ModelConfig both describe."""
    if model.config.kind == "text":
        item, datatype = (-1,), "BYTES"
    else:
        item = (-1, *model.config.input_shape)
        datatype = DATATYPE[np.dtype(model.config.input_dtype).newbyteorder("<")]
    if embed:
        return [Tensor("ITEMS", datatype, item)], [Tensor(EMBED_OUTPUTS[0], "FP32", (-1, model.config.embedding_size))]
    return ([Tensor("SUPPORT", datatype, item), Tensor("SUPPORT_LABELS", "BYTES", (-1,)),
             Tensor("QUERY", datatype, item)], list(FEWSHOT_OUTPUT_TENSORS))


def model_metadata(model: FewShotModel, versions: list[str], embed: bool) -> pb.ModelMetadataResponse:
    inputs, outputs = _tensors(model, embed)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=model.name + (EMBED_SUFFIX if embed else ""), versions=versions,
        platform=EMBED_PLATFORM if embed else FEWSHOT_PLATFORM,
        inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in inputs],
        outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape) for t in outputs])


def _config_datatype(datatype: str) -> int:
    """A protocol datatype as model_config.proto's enum (BYTES is TYPE_STRING there)."""
    return config_pb.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


def model_config(model: FewShotModel, embed: bool) -> pb.ModelConfigResponse:
    """Triton's configuration of the v2 model: every version served, no batching across requests
    (``max_batch_size`` 0, so ``dims`` are the whole shapes, the item count -1 as in ModelMetadata)."""
    inputs, outputs = _tensors(model, embed)
    return pb.ModelConfigResponse(config=config_pb.ModelConfig(
        name=model.name + (EMBED_SUFFIX if embed else ""),
        platform=EMBED_PLATFORM if embed else FEWSHOT_PLATFORM,
        backend=EMBED_BACKEND if embed else "",
        version_policy=config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All()),
        max_batch_size=0,
        input=[config_pb.ModelInput(name=t.name, data_type=_config_datatype(t.datatype), dims=t.shape)
               for t in inputs],
        output=[config_pb.ModelOutput(name=t.name, data_type=_config_datatype(t.datatype), dims=t.shape)
                for t in outputs]))


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=round(duration.seconds * 1e9))


def model_statistics(entries: list[tuple[FewShotModel, bool, VersionStatistics]]) -> pb.ModelStatisticsResponse:
    """One entry per (model version, v2 model): the few-shot model and ``.embed`` count their own calls.
    Triton's compute stages are metalearn's decode (input), backbone (infer) and head (output)."""
    return pb.ModelStatisticsResponse(model_stats=[
        pb.ModelStatistics(
            name=model.name + (EMBED_SUFFIX if embed else ""), version=model.version,
            last_inference=round(totals.last_inference * 1000), inference_count=totals.success.count,
            execution_count=totals.success.count,
            inference_stats=pb.InferStatistics(
                success=_duration(totals.success), fail=_duration(totals.fail), queue=_duration(totals.queue()),
                compute_input=_duration(totals.stage("decode")), compute_infer=_duration(totals.stage("embed")),
                compute_output=_duration(totals.stage("head"))))
        for model, embed, totals in entries])


def repository_index(states: list[tuple[str, str, str]], ready_only: bool) -> pb.RepositoryIndexResponse:
    """Both v2 models of every version folder: READY, or UNAVAILABLE with the reason it was refused."""
    index = pb.RepositoryIndexResponse.ModelIndex
    return pb.RepositoryIndexResponse(models=[
        index(name=name + suffix, version=version, state="UNAVAILABLE" if reason else "READY", reason=reason)
        for name, version, reason in states if not (ready_only and reason) for suffix in ("", EMBED_SUFFIX)])


# -- inputs -------------------------------------------------------------------------------------
def decode_bytes_elements(raw: bytes, count: int, what: str) -> list[bytes]:
    """The protocol's BYTES encoding: each element is a 4-byte little-endian length, then that many bytes."""
    elements, offset = [], 0
    for index in range(count):
        if offset + 4 > len(raw):
            raise InvalidArgument(f"{what} ends before element {index}'s 4-byte length; "
                                  f"shape promises {count} elements")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidArgument(f"{what} element {index} claims {length} bytes, {len(raw) - offset} remain")
        elements.append(raw[offset: offset + length])
        offset += length
    if offset != len(raw):
        raise InvalidArgument(f"{what} has {len(raw) - offset} bytes after its {count} elements")
    return elements


def encode_bytes_elements(elements: list[str] | tuple[str, ...]) -> bytes:
    encoded = [element.encode() for element in elements]
    return b"".join(struct.pack("<I", len(element)) + element for element in encoded)


def _decode_input(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> np.ndarray | list[bytes]:
    what = f"input {tensor.name}"
    shape = tuple(tensor.shape)
    validation.dimensions(shape, what)
    if not shape or any(d < 0 for d in shape):
        raise InvalidArgument(f"{what} has shape {list(shape)}; give every dimension, none negative")
    count = math.prod(shape)
    if tensor.datatype == "BYTES":
        if raw is not None:
            return decode_bytes_elements(raw, count, what)
        elements = list(tensor.contents.bytes_contents)
        if len(elements) != count:
            raise InvalidArgument(f"{what} has {len(elements)} bytes_contents; shape {list(shape)} needs {count}")
        return elements
    dtype = NUMERIC.get(tensor.datatype)
    if dtype is None:
        raise InvalidArgument(f"{what} has datatype {excerpt(tensor.datatype)}; use one of "
                              f"{', '.join([*NUMERIC, 'BYTES'])}")
    if raw is not None:
        if len(raw) != count * dtype.itemsize:
            raise InvalidArgument(f"{what} has {len(raw)} raw bytes; shape {list(shape)} of {tensor.datatype} "
                                  f"needs {count * dtype.itemsize} (row-major, little-endian)")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    values = getattr(tensor.contents, CONTENTS_FIELD[tensor.datatype])
    if len(values) != count:
        raise InvalidArgument(f"{what} has {len(values)} {CONTENTS_FIELD[tensor.datatype]}; "
                              f"shape {list(shape)} needs {count}")
    return np.asarray(values, dtype=dtype).reshape(shape)


def inputs(request: pb.ModelInferRequest, expected: tuple[str, ...]) -> dict[str, np.ndarray | list[bytes]]:
    """Every expected input, decoded; anything missing, repeated or unknown is refused."""
    names = [tensor.name for tensor in request.inputs]
    if sorted(names) != sorted(expected):  # one of each, nothing else
        raise InvalidArgument(f"model {excerpt(request.model_name, quote=False)} takes the inputs {', '.join(expected)}, once "
                              f"each; the request has {excerpt(', '.join(names), quote=False) if names else 'none'} "
                              "(see ModelMetadata)")
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(names):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(names)} inputs; "
                              "send one per input, in the order of inputs, or none and use contents")
    return {tensor.name: _decode_input(tensor, raw[i] if raw else None) for i, tensor in enumerate(request.inputs)}


def _parameter(request: pb.ModelInferRequest, name: str) -> str | int | float | None:
    if name not in request.parameters:
        return None
    parameter = request.parameters[name]
    kind = parameter.WhichOneof("parameter_choice")
    if kind != PARAMETERS[name]:
        raise InvalidArgument(f"parameter {name} is a {kind or 'value-less parameter'}; "
                              f"send it as {PARAMETERS[name]}")
    return getattr(parameter, kind)


def _as_items(value: np.ndarray | list[bytes], name: str) -> Items:
    """A numeric tensor is images; BYTES elements are UTF-8 texts (which kind the model takes is the data
    plane's check)."""
    if isinstance(value, list):
        return Items(texts=_texts(value, name))
    if value.ndim < 2:
        raise InvalidArgument(f"input {name} has shape {list(value.shape)}; give the item count first, "
                              "then the item's dimensions")
    return Items(tensor=value)


def _texts(elements: list[bytes], name: str) -> tuple[str, ...]:
    texts = []
    for index, element in enumerate(elements):
        try:
            texts.append(element.decode())
        except UnicodeDecodeError as error:
            raise InvalidArgument(f"input {name} element {index} is not UTF-8 text ({error.reason} at byte "
                                  f"{error.start}); send texts as UTF-8") from None
    return tuple(texts)


def _labels(value: np.ndarray | list[bytes]) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidArgument("input SUPPORT_LABELS must be BYTES: one UTF-8 label per support item")
    try:
        return tuple(label.decode() for label in value)
    except UnicodeDecodeError as error:
        raise InvalidArgument(f"input SUPPORT_LABELS holds a label that is not UTF-8 ({error})") from None


def classify_request(request: pb.ModelInferRequest, model_name: str) -> tuple[SupportRequest, QueryRequest]:
    """A v2 inference on a few-shot model, as the native Classify call it stands for."""
    unknown = sorted(set(request.parameters) - set(PARAMETERS) - TRITON_PARAMETERS)
    if unknown:
        raise InvalidArgument(f"unknown parameter {excerpt(', '.join(unknown), quote=False)}; few-shot models take "
                              f"{', '.join(PARAMETERS)}")
    tensors = inputs(request, FEWSHOT_INPUTS)
    support = SupportRequest(
        model=model_name,
        model_version=request.model_version,
        items=_as_items(tensors["SUPPORT"], "SUPPORT"),
        labels=_labels(tensors["SUPPORT_LABELS"]),
        method=_parameter(request, "method") or "",
        distance=_parameter(request, "distance") or "",
        adaptation=AdaptationRequest(steps=_parameter(request, "adaptation_steps"),
                                     learning_rate=_parameter(request, "adaptation_learning_rate"),
                                     l2=_parameter(request, "adaptation_l2")),
    )
    return support, QueryRequest(items=_as_items(tensors["QUERY"], "QUERY"),
                                 rejection_threshold=_parameter(request, "rejection_threshold"))


def embed_items(request: pb.ModelInferRequest) -> Items:
    unknown = sorted(set(request.parameters) - TRITON_PARAMETERS)
    if unknown:
        raise InvalidArgument(f"the backbone model takes no parameters; drop "
                              f"{excerpt(', '.join(unknown), quote=False)}")
    return _as_items(inputs(request, ("ITEMS",))["ITEMS"], "ITEMS")


# -- outputs ------------------------------------------------------------------------------------
def float_output(array: np.ndarray) -> Output:
    array = np.ascontiguousarray(array, dtype="<f4")
    return Output("FP32", array.shape, array.tobytes())


def bytes_output(elements: list[str] | tuple[str, ...]) -> Output:
    return Output("BYTES", (len(elements),), encode_bytes_elements(elements))


def _labels_output(result: Classification) -> Output:
    best = result.probabilities.argmax(axis=1)
    return bytes_output(["" if unknown else result.classes[i]
                         for i, unknown in zip(best.tolist(), result.unknown.tolist())])


def classification_outputs(result: Classification) -> dict[str, Callable[[], Output]]:
    """Each output's encoder, so that an answer encodes only what its request asked for."""
    return {"SCORES": partial(float_output, result.probabilities), "CLASSES": partial(bytes_output, result.classes),
            "LABELS": partial(_labels_output, result), "KNOWN_SCORE": partial(float_output, result.known)}


def requested_outputs(request: pb.ModelInferRequest, embed: bool) -> tuple[str, ...]:
    """The outputs the request names (all of the model's, if none), checked before any model work."""
    available = EMBED_OUTPUTS if embed else FEWSHOT_OUTPUTS
    for wanted in request.outputs:
        if wanted.name not in available:
            raise InvalidArgument(f"model {excerpt(request.model_name, quote=False)} has no output {excerpt(wanted.name)}; "
                                  f"it has {', '.join(available)}")
        if wanted.parameters:
            raise InvalidArgument(f"output {wanted.name}: output parameters "
                                  f"({', '.join(sorted(wanted.parameters))}) are not supported")
    return tuple(wanted.name for wanted in request.outputs) or available


def infer_response(request: pb.ModelInferRequest, model_name: str, version: str, names: tuple[str, ...],
                   encoders: dict[str, Callable[[], Output]]) -> pb.ModelInferResponse:
    """The outputs ``names`` (from :func:`requested_outputs`), in that order."""
    outputs = [encoders[name]() for name in names]
    return pb.ModelInferResponse(
        model_name=model_name, model_version=version, id=request.id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=name, datatype=output.datatype, shape=output.shape)
                 for name, output in zip(names, outputs)],
        raw_output_contents=[output.raw for output in outputs])
