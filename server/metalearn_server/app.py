"""Assembles the server: repository → data plane → gRPC services (metalearn.v1 and KServe v2),
health, reflection, metrics.

``metalearn-server --help`` lists the flags.  On SIGTERM or SIGINT, health
turns NOT_SERVING first and the server keeps serving for ``--drain-seconds``
(so load balancers watching health stop sending), then stops accepting and
gives requests in flight ``--grace-seconds`` to finish.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from metalearn.kserve.v2 import grpc_service_pb2, grpc_service_pb2_grpc
from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc, model_pb2, model_pb2_grpc

from metalearn_server import settings as settings_module
from metalearn_server.dataplane import DataPlane
from metalearn_server.execution.repository import ModelRepository
from metalearn_server.execution.runtime import CPU, resolve_providers
from metalearn_server.observability import logging as json_logging
from metalearn_server.observability.metrics import Metrics
from metalearn_server.scheduling.task_store import TaskStore
from metalearn_server.settings import Settings
from metalearn_server.transport.auth import BearerTokenInterceptor, load_tokens, server_credentials
from metalearn_server.transport.fewshot_servicer import FewShotServicer
from metalearn_server.transport.interceptors import ServingInterceptor
from metalearn_server.transport.kserve_servicer import KServeServicer
from metalearn_server.transport.model_servicer import ModelServicer

log = logging.getLogger("metalearn_server")

#: ``--workers 0`` on a GPU execution provider.
GPU_WORKERS = 4

SERVICE_NAMES = (
    fewshot_pb2.DESCRIPTOR.services_by_name["FewShotService"].full_name,
    model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,  # KServe v2
)


def build_dataplane(settings: Settings, metrics: Metrics) -> DataPlane:
    providers = resolve_providers(settings.providers)
    repository = ModelRepository(settings.model_repository, providers, settings.default_model,
                                 settings.intra_op_threads,
                                 on_refused=lambda name, version: metrics.model_load_failures.labels(name).inc())
    show_models(repository, metrics)
    if settings.redis_url:
        from metalearn_server.scheduling.redis_task_store import RedisTaskStore  # the [redis] extra

        tasks = RedisTaskStore(settings.redis_url, repository, settings.task_ttl_seconds,
                               settings.max_task_ttl_seconds, settings.max_task_bytes)
    else:
        tasks = TaskStore(settings.max_tasks, settings.task_ttl_seconds, settings.max_task_ttl_seconds,
                          settings.max_task_bytes, on_evict=lambda reason: metrics.task_evictions.labels(reason).inc())
    metrics.track_tasks(lambda: len(tasks), lambda: tasks.nbytes)
    return DataPlane(repository, tasks, metrics, settings.limits, model_workers(settings.workers, providers),
                     settings.max_queued_requests)


def model_workers(requested: int, providers: list[str]) -> int:
    """``--workers``, or for 0 what measured best: one request at a time on the CPU provider, whose
    backbone call already spreads over every core (paired `make bench` quick runs: 4-17% more throughput
    at concurrency 16 than with four), several on a GPU, where one request's CPU work overlaps another's
    device work."""
    return requested or (1 if providers[0] == CPU else GPU_WORKERS)


def show_models(repository: ModelRepository, metrics: Metrics) -> None:
    metrics.show_models([(model.name, model.version, model.providers[0])
                         for entry in repository.entries() for model in entry.versions.values()])


async def watch_repository(dataplane: DataPlane, metrics: Metrics, seconds: float) -> None:
    """Hot reload: look for new, removed or repaired version folders every ``seconds``; refresh shared-store figures."""
    while True:
        await asyncio.sleep(seconds)
        try:
            if await asyncio.to_thread(dataplane.repository.refresh):
                show_models(dataplane.repository, metrics)
            if hasattr(dataplane.tasks, "refresh_stats"):  # a shared store
                await dataplane.tasks.refresh_stats()
        except Exception:  # noqa: BLE001 - a folder changing under the scan, Redis away; the next poll retries
            log.exception("periodic refresh failed; serving what was loaded")


async def serve(settings: Settings) -> None:
    metrics = Metrics()
    dataplane = build_dataplane(settings, metrics)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    tokens = load_tokens(Path(settings.auth_tokens_file) if settings.auth_tokens_file else None, settings.auth_tokens)
    if tokens:
        interceptors.append(BearerTokenInterceptor(tokens, protect_health=settings.auth_health))
    server = grpc.aio.server(
        interceptors=[*interceptors, ServingInterceptor(metrics)],
        options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                 ("grpc.max_send_message_length", settings.max_message_bytes)],
    )
    stop = asyncio.Event()
    fewshot_pb2_grpc.add_FewShotServiceServicer_to_server(FewShotServicer(dataplane), server)
    model_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(dataplane), server)
    grpc_service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        KServeServicer(dataplane, ready=lambda: not stop.is_set()), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)

    address = f"{settings.host}:{settings.port}"
    if settings.tls_cert:
        credentials = server_credentials(Path(settings.tls_cert), Path(settings.tls_key),
                                         Path(settings.tls_client_ca) if settings.tls_client_ca else None)
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving metalearn.v1 on port %d (%s%s; metrics on port %d; %d model workers; models: %s)", port,
             "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
             ", bearer tokens required" if tokens else "", settings.metrics_port, dataplane.admission.max_concurrent,
             ", ".join(e.name for e in dataplane.repository.entries()))

    watcher = asyncio.create_task(watch_repository(dataplane, metrics, settings.poll_seconds)) \
        if settings.poll_seconds > 0 else None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: health NOT_SERVING, %.1f s to drain, then %.1f s grace for requests in flight",
             settings.drain_seconds, settings.grace_seconds)
    if watcher is not None:
        watcher.cancel()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(settings.drain_seconds)  # balancers watching health stop routing here meanwhile
    await server.stop(settings.grace_seconds)
    dataplane.close()
    if hasattr(dataplane.tasks, "close"):
        await dataplane.tasks.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    settings = settings_module.parse(argv)
    json_logging.configure(settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
