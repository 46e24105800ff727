"""The standard gRPC health service and server reflection, as orchestrators and tools use them."""
from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from helpers import start_server, stop_server
from metalearn_client import Client
from metalearn_client.items import to_items

SERVICES = ["metalearn.v1.FewShotService", "metalearn.v1.ModelService"]


def test_health_check_per_service(server):
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *SERVICES]:
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING, service
        try:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
            raise AssertionError("an unknown service must not be reported healthy")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_reports_not_serving_on_shutdown(tmp_path):
    running = start_server(tmp_path)
    with grpc.insecure_channel(running.target) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=30)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        running.process.terminate()
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert running.process.wait(timeout=30) == 0


def test_reflection_lists_and_describes_the_services(server):
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="metalearn.v1.FewShotService")]
        listed, described = list(stub.ServerReflectionInfo(iter(requests), timeout=5))
    names = {s.name for s in listed.list_services_response.service}
    assert set(SERVICES) | {"grpc.health.v1.Health"} <= names
    assert described.file_descriptor_response.file_descriptor_proto


def test_request_ids_tie_answers_to_log_lines(tmp_path):
    running = start_server(tmp_path, "--log-level", "DEBUG", "--auth-tokens", "s3cr3t-t0ken-4-request-ids",
                           probe=lambda target: Client(target, token="s3cr3t-t0ken-4-request-ids"))
    secret_label = "label-that-must-not-be-logged"
    try:
        with grpc.insecure_channel(running.target) as channel:
            stub = fewshot_pb2_grpc.FewShotServiceStub(channel)
            support = to_items(np.zeros((2, 1, 28, 28), np.float32))
            request = fewshot_pb2.ClassifyRequest(
                support=fewshot_pb2.SupportSet(items=support, labels=[secret_label, "other"]), queries=support)
            metadata = (("authorization", "Bearer s3cr3t-t0ken-4-request-ids"), ("x-request-id", "caller-42"))
            _, call = stub.Classify.with_call(request, metadata=metadata, timeout=10)
            assert dict(call.trailing_metadata())["x-request-id"] == "caller-42"
            with pytest.raises(grpc.RpcError) as error:
                stub.Classify(fewshot_pb2.ClassifyRequest(), metadata=metadata[:1], timeout=10)
            generated = dict(error.value.trailing_metadata())["x-request-id"]
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and len(generated) == 16
    finally:
        stop_server(running)
    lines = [json.loads(line) for line in running.log().splitlines() if line.startswith("{")]
    assert any(line.get("request_id") == "caller-42" and "Classify OK" in line["message"] for line in lines)
    assert any(line.get("request_id") == generated and "INVALID_ARGUMENT" in line["message"] for line in lines)
    assert secret_label not in running.log() and "s3cr3t-t0ken-4-request-ids" not in running.log()


def test_garbage_to_the_open_services_is_refused_and_logged_once(tmp_path):
    """Bytes that are not a request message, sent to health (open to anyone) and reflection: INVALID_ARGUMENT
    and one log line for the lot (before: UNKNOWN, and an 800-byte traceback per 16-byte call)."""
    running = start_server(tmp_path)
    try:
        with grpc.insecure_channel(running.target) as channel:
            logged = len(running.log())
            for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
                call = (channel.unary_unary if method.endswith("Check") else channel.unary_stream)(method)
                for _ in range(25):
                    with pytest.raises(grpc.RpcError) as error:
                        result = call(b"\xff" * 16, timeout=5)
                        list(result) if method.endswith("Watch") else result
                    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            reflect = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
            with pytest.raises(grpc.RpcError) as error:
                list(reflect(iter([b"\xff" * 16]), timeout=5))
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            health = health_pb2_grpc.HealthStub(channel)  # and the services still answer
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
        lines = running.log()[logged:].splitlines()
        assert "Traceback" not in running.log()
        assert sum("whose bytes are not the method's request message" in line for line in lines) == 1, lines
    finally:
        stop_server(running)


def test_calls_to_unknown_methods_are_counted(server):
    """Third-party tools calling what metalearn lacks show on the errors panel as UNIMPLEMENTED."""
    from test_metrics import scrape, value

    before = value(scrape(server), "metalearn_requests_total", code="UNIMPLEMENTED")
    with grpc.insecure_channel(server.target) as channel:
        for method in ("/inference.GRPCInferenceService/NoSuchCall", "/no.such.Service/Call"):
            with pytest.raises(grpc.RpcError) as error:
                channel.unary_unary(method)(b"", timeout=5)
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    text = scrape(server)
    assert value(text, "metalearn_requests_total", code="UNIMPLEMENTED", rpc="unknown") - before == 2
