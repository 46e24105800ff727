"""Assembles the server: repository → data plane → gRPC services (metalearn.v1 and KServe v2),
health, reflection, metrics.

``metalearn-server --help`` lists the flags.  On SIGTERM or SIGINT, health
turns NOT_SERVING first and the server keeps serving for ``--drain-seconds``
(so load balancers watching health stop sending), then stops accepting and
gives requests in flight ``--grace-seconds`` to finish; what is still running
then is stopped, so the process exits within drain + grace and a moment.

A configuration that cannot work (a missing repository, a tokens file with no
token, a certificate that does not match its key, a port already taken, the
Redis extra not installed) stops the start-up with one log line naming the
cause, and exit status 2.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from metalearn.kserve.v2 import grpc_service_pb2, grpc_service_pb2_grpc
from metalearn.v1 import fewshot_pb2, fewshot_pb2_grpc, model_pb2, model_pb2_grpc

from metalearn_server import memory
from metalearn_server import settings as settings_module
from metalearn_server.dataplane import DataPlane
from metalearn_server.errors import StartupError
from metalearn_server.execution.model import CPU_BATCH_ITEMS
from metalearn_server.execution.repository import ModelRepository
from metalearn_server.execution.runtime import CPU, resolve_providers
from metalearn_server.observability import logging as json_logging
from metalearn_server.observability.metrics import Metrics
from metalearn_server.scheduling.admission import Budget
from metalearn_server.scheduling.model_work import ModelWork
from metalearn_server.scheduling.task_store import TaskStore
from metalearn_server.settings import Settings
from metalearn_server.transport.auth import BearerTokenInterceptor, load_tokens, server_credentials
from metalearn_server.transport.fewshot_servicer import FewShotServicer
from metalearn_server.transport.interceptors import ServingInterceptor
from metalearn_server.transport.kserve_servicer import KServeServicer, server_version
from metalearn_server.transport.model_servicer import ModelServicer

log = logging.getLogger("metalearn_server")

#: ``--workers 0`` on a GPU execution provider.
GPU_WORKERS = 4
#: ``--batch-items 0`` on a GPU execution provider, where big batches keep the device busy.
GPU_BATCH_ITEMS = 1024
#: How often the task store is asked whether it answers, for health.
STORE_CHECK_SECONDS = 1.0

FEWSHOT_SERVICE = fewshot_pb2.DESCRIPTOR.services_by_name["FewShotService"].full_name
SERVICE_NAMES = (
    FEWSHOT_SERVICE,
    model_pb2.DESCRIPTOR.services_by_name["ModelService"].full_name,
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,  # KServe v2
)


def build_dataplane(settings: Settings, metrics: Metrics) -> DataPlane:
    providers = resolve_providers(settings.providers)
    on_gpu = providers[0] != CPU
    try:
        repository = ModelRepository(settings.model_repository, providers, settings.default_model,
                                     settings.intra_op_threads,
                                     on_refused=lambda name, version: metrics.model_load_failures.labels(name).inc(),
                                     batch_items=settings.batch_items or (GPU_BATCH_ITEMS if on_gpu else CPU_BATCH_ITEMS))
    except FileNotFoundError as error:
        raise StartupError(f"{error} (--model-repository)") from None
    show_models(repository, metrics)
    if settings.redis_url:
        try:
            from metalearn_server.scheduling.redis_task_store import RedisTaskStore
        except ImportError:
            raise StartupError("--redis-url needs the redis package: pip install 'metalearn-server[redis]'") from None
        tasks = RedisTaskStore(settings.redis_url, repository, settings.task_ttl_seconds,
                               settings.max_task_ttl_seconds, settings.max_task_bytes)
    else:
        tasks = TaskStore(settings.max_tasks, settings.task_ttl_seconds, settings.max_task_ttl_seconds,
                          settings.max_task_bytes, on_evict=lambda reason: metrics.task_evictions.labels(reason).inc())
    metrics.track_tasks(lambda: len(tasks), lambda: tasks.nbytes)
    workers = model_workers(settings.workers, providers)
    work = ModelWork(workers, Budget(max_requests=workers + settings.max_queued_requests,
                                     max_items=settings.max_inflight_items, max_bytes=settings.max_inflight_bytes))
    return DataPlane(repository, tasks, metrics, settings.limits, work, settings.max_message_bytes)


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
    """Hot reload: look for new, removed or repaired version folders every ``seconds``; then hand memory freed
    since the last look back to the system (collecting reference cycles first when no request is in flight)."""
    while True:
        await asyncio.sleep(seconds)
        try:
            if await asyncio.to_thread(dataplane.repository.refresh):
                show_models(dataplane.repository, metrics)
        except Exception:  # noqa: BLE001 - the scan skips bad entries itself; this is a last resort, the next poll retries
            log.exception("repository scan failed; serving what was loaded")
        memory.trim(collect=dataplane.work.idle)


async def watch_task_store(dataplane: DataPlane, health_servicer: health.aio.HealthServicer) -> None:
    """FewShotService is NOT_SERVING while its task store cannot be reached (a shared Redis), and SERVING
    again once it can; the server as a whole ("") stays SERVING, as Classify and Embed still work."""
    serving = True
    while True:
        await asyncio.sleep(STORE_CHECK_SECONDS)
        now = await dataplane.tasks.healthy()
        if now != serving:
            serving = now
            log.log(logging.INFO if now else logging.ERROR, "task store %s; %s is %s", "back" if now else "lost",
                    FEWSHOT_SERVICE, "SERVING" if now else "NOT_SERVING")
            await health_servicer.set(FEWSHOT_SERVICE, health_pb2.HealthCheckResponse.SERVING if now
                                      else health_pb2.HealthCheckResponse.NOT_SERVING)


def listen(server: grpc.aio.Server, settings: Settings) -> int:
    address = f"{settings.host}:{settings.port}"
    credentials = None
    if settings.tls_cert:
        credentials = server_credentials(Path(settings.tls_cert), Path(settings.tls_key),
                                         Path(settings.tls_client_ca) if settings.tls_client_ca else None)
    try:
        return server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:  # gRPC says only "Failed to bind to address"
        raise StartupError(f"cannot listen on {address}: another process holds the port, or the address is not "
                           "this machine's; choose another --port or --host (or give --reuse-port to every server "
                           "meant to share it)") from None


def metrics_address(settings: Settings) -> str:
    """Where metrics are served: --metrics-host, else the gRPC --host ("[::]" written without brackets)."""
    return (settings.metrics_host or settings.host).strip("[]")


async def serve(settings: Settings) -> None:
    tokens = load_tokens(Path(settings.auth_tokens_file) if settings.auth_tokens_file else None, settings.auth_tokens)
    metrics = Metrics(server_version())
    dataplane = build_dataplane(settings, metrics)
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if tokens:
        interceptors.append(BearerTokenInterceptor(tokens, protect_health=settings.auth_health))
    server = grpc.aio.server(
        interceptors=[*interceptors, ServingInterceptor(metrics, dataplane.work.admission.check_message)],
        options=[("grpc.max_receive_message_length", settings.max_message_bytes),
                 ("grpc.max_send_message_length", settings.max_message_bytes),
                 # gRPC sets SO_REUSEPORT by default: a second server on the same port would start silently
                 # and take half the connections, so sharing is asked for, never assumed.
                 ("grpc.so_reuseport", int(settings.reuse_port))],
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

    port = listen(server, settings)
    if settings.metrics_port:
        try:
            metrics.serve(settings.metrics_port, metrics_address(settings))
        except OSError as error:
            raise StartupError(f"cannot serve metrics on {metrics_address(settings)}:{settings.metrics_port} "
                               f"({error.strerror or error}); choose another --metrics-port or --metrics-host") from None
    await server.start()
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving metalearn.v1 on port %d (%s%s; metrics on %s:%d; %d model workers; models: %s)", port,
             "mutual TLS" if settings.tls_client_ca else "TLS" if settings.tls_cert else "plaintext",
             ", bearer tokens required" if tokens else "", metrics_address(settings), settings.metrics_port,
             dataplane.work.workers, ", ".join(e.name for e in dataplane.repository.entries()))

    watchers = [asyncio.create_task(watch_task_store(dataplane, health_servicer))]
    if settings.poll_seconds > 0:
        watchers.append(asyncio.create_task(watch_repository(dataplane, metrics, settings.poll_seconds)))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: health NOT_SERVING, %.1f s to drain, then %.1f s grace for requests in flight",
             settings.drain_seconds, settings.grace_seconds)
    for watcher in watchers:
        watcher.cancel()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(settings.drain_seconds)  # balancers watching health stop routing here meanwhile
    await server.stop(settings.grace_seconds)
    dataplane.close()  # stops what the grace period left running
    await dataplane.tasks.close()
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    settings = settings_module.parse(argv)
    json_logging.configure(settings.log_level)
    memory.return_large_buffers()
    try:
        asyncio.run(serve(settings))
    except StartupError as error:
        log.error("cannot start: %s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
