"""The README's facts, read from the README and checked against the live model and server: the embedding
size it quotes, and which KServe v2 / Triton calls are served and which answer UNIMPLEMENTED."""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import grpc
import numpy as np
import pytest
from metalearn.kserve.v2 import grpc_service_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
TRITON_PYTHON = ROOT / ".venv-triton" / "bin" / "python"
SERVICE = "inference.GRPCInferenceService"


def readme_fact(pattern: str) -> str:
    found = re.findall(pattern, README)
    assert len(found) == 1, f"the README should state this once: {pattern} (found {found})"
    return found[0]


def kserve_calls() -> dict[str, tuple[list[str], bool]]:
    """The README's table: v2 RPC → (tritonclient methods that use it, served today)."""
    names = r"((?:`\w+`(?:, )?)+)"
    calls = {}
    for triton, rpcs, today in re.findall(rf"^\| {names} \| {names} \| (served|`UNIMPLEMENTED`) \|(?: [^|]*\|)?$", README, re.M):
        for rpc in re.findall(r"`(\w+)`", rpcs):
            calls[rpc] = (re.findall(r"`(\w+)`", triton), today == "served")
    assert calls, "the README's KServe table of calls is missing"
    return calls


def test_the_embedding_size_quoted_is_the_models(client, episode):
    model = client.get_model()
    quoted = int(readme_fact(r"client\.embed\(.*# \[N, (\d+)\] for the default model"))
    in_table = int(readme_fact(r"`EMBEDDINGS` FP32 `\[n,(\d+)\]`"))
    embedded = client.embed(np.zeros((2, *model.input.shape[1:]), np.float32))
    assert quoted == in_table == model.embedding_size == embedded.shape[1]


def test_the_kserve_calls_listed_as_served_are_and_the_others_answer_unimplemented(server):
    calls = kserve_calls()
    ours = {m.name for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods}
    assert {rpc for rpc, (_, served) in calls.items() if served} == ours  # the table follows the proto
    with grpc.insecure_channel(server.target) as channel:
        for rpc, (_, served) in calls.items():
            call = channel.unary_unary(f"/{SERVICE}/{rpc}", request_serializer=None, response_deserializer=None)
            try:
                call(b"", timeout=10)  # an empty message parses as every request type
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            assert (code != grpc.StatusCode.UNIMPLEMENTED) == served, (rpc, code)


def test_the_kserve_table_covers_tritons_protocol_with_its_real_call_names():
    if not TRITON_PYTHON.exists():
        if os.environ.get("CI"):
            pytest.fail(".venv-triton is missing; `make test` installs tritonclient[grpc] there")
        pytest.skip("tritonclient not installed (.venv-triton)")
    probe = ("import json, tritonclient.grpc as t; from tritonclient.grpc import service_pb2 as s; "
             "service = s.DESCRIPTOR.services_by_name['GRPCInferenceService']; "
             "print(json.dumps({'rpcs': [m.name for m in service.methods],"
             " 'calls': [n for n in dir(t.InferenceServerClient) if not n.startswith('_')]}))")
    triton = json.loads(subprocess.run([str(TRITON_PYTHON), "-c", probe], capture_output=True, text=True,
                                       check=True, timeout=60).stdout)
    calls = kserve_calls()
    assert set(calls) == set(triton["rpcs"])
    named = {name for names, _ in calls.values() for name in names}
    assert named <= set(triton["calls"]), named - set(triton["calls"])
