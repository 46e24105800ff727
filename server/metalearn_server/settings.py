"""Server settings: command-line flags, each also readable from an environment variable.

A flag ``--metrics-port`` reads ``METALEARN_METRICS_PORT`` when not given;
the flag wins over the variable, the variable over the default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from metalearn_server.execution.repository import BUNDLED_REPOSITORY
from metalearn_server.execution.runtime import DEFAULT_PREFERENCE
from metalearn_server.validation import Limits

ENV_PREFIX = "METALEARN_"


@dataclass(frozen=True)
class Settings:
    host: str = "[::]"
    port: int = 50051
    reuse_port: bool = False
    metrics_host: str = ""
    metrics_port: int = 8002
    model_repository: Path = BUNDLED_REPOSITORY
    default_model: str = ""
    poll_seconds: float = 5.0
    providers: tuple[str, ...] = DEFAULT_PREFERENCE
    workers: int = 0
    max_queued_requests: int = 64
    max_inflight_items: int = 16_384
    max_inflight_bytes: int = 256 * 1024 * 1024
    batch_items: int = 0
    intra_op_threads: int = 0
    max_message_bytes: int = 64 * 1024 * 1024
    redis_url: str = ""
    max_tasks: int = 10_000
    max_task_bytes: int = 1 << 30
    task_ttl_seconds: float = 3600.0
    max_task_ttl_seconds: float = 86_400.0
    drain_seconds: float = 2.0
    grace_seconds: float = 10.0
    log_level: str = "INFO"
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_tokens: str = ""
    auth_tokens_file: str = ""
    auth_health: bool = False
    limits: Limits = Limits()


HELP = {
    "host": "address to listen on for gRPC",
    "port": "gRPC port (0: pick a free one and log it)",
    "reuse_port": "share --port with other processes that ask for it too (SO_REUSEPORT: the kernel splits "
                  "connections among them); without it a port already taken refuses the start",
    "metrics_host": "address to serve metrics on (empty: the --host address); the endpoint has no authentication, "
                    "so keep it on an address only the scraper reaches (see the README's Metrics section)",
    "metrics_port": "Prometheus metrics port, plain text format at /metrics (0: no metrics endpoint); "
                    "8002 as in Triton, clear of Prometheus's own 9090",
    "model_repository": "model repository folder holding <name>/<version>/config.json; the default is the bundled one",
    "poll_seconds": "how often the model repository is scanned for new, removed or repaired versions (0: never)",
    "default_model": "model used when a request names none; empty: the first by name",
    "providers": "ONNX Runtime execution providers in order of preference, comma-separated; "
                 "missing ones are skipped, CPUExecutionProvider always closes the list",
    "workers": "requests running models at once (threads); 0: one where the CPU execution provider runs them, "
               "as one backbone call already spreads over every core and a second only contends with it, "
               "four on a GPU provider, where one request's CPU work overlaps another's device work",
    "max_queued_requests": "requests waiting for a worker; beyond it new ones get RESOURCE_EXHAUSTED at once",
    "max_inflight_items": "support and query items of all requests running or waiting; a request is admitted while "
                          "it leaves room for its own size again (big ones never take the last of it), else "
                          "RESOURCE_EXHAUSTED at once, so a flood of huge requests cannot queue minutes of work",
    "max_inflight_bytes": "bytes of the items of all requests running or waiting, as received, admitted the same way "
                          "(bounds the memory that waiting requests hold)",
    "batch_items": "items per backbone call: bigger inputs run in chunks of at most this many, each chunk a turn of the "
                   "fair scheduler (0: 64 on the CPU provider, 1024 on a GPU)",
    "intra_op_threads": "ONNX Runtime threads inside one backbone call (0: ONNX Runtime's choice)",
    "max_message_bytes": "largest gRPC message accepted or sent; larger ones get RESOURCE_EXHAUSTED",
    "redis_url": "keep tasks in Redis (e.g. redis://localhost:6379/0, a database of metalearn's own) so that "
                 "every replica can serve them; empty: in this process",
    "max_tasks": "tasks kept at once; the least recently used is evicted beyond it",
    "max_task_bytes": "bytes of task heads kept at once; the least recently used is evicted beyond it",
    "task_ttl_seconds": "time to live of a task whose request sets none",
    "max_task_ttl_seconds": "longest time to live a request may ask for",
    "drain_seconds": "on SIGTERM/SIGINT, time between health turning NOT_SERVING and refusing new requests",
    "grace_seconds": "then, time given to requests in flight before they are cancelled",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "tls_cert": "PEM certificate (chain) of the server: serve TLS instead of plaintext (with --tls-key)",
    "tls_key": "PEM private key of --tls-cert",
    "tls_client_ca": "PEM CA bundle: require client certificates it signed (mutual TLS)",
    "auth_tokens": "comma-separated bearer tokens a call must present (prefer --auth-tokens-file or the env)",
    "auth_tokens_file": "file of bearer tokens, one per line; any one admits a call",
    "auth_health": "require a token for health checks too (default: health stays open for probes)",
}


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _providers(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _add_flag(parser: argparse.ArgumentParser, name: str, default: object, help_text: str) -> None:
    """One flag whose default comes from its environment variable when that is set."""
    if isinstance(default, bool):
        env_value = os.environ.get(_env_name(name))
        parser.add_argument(f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
                            default=env_value.lower() in ("1", "true", "yes") if env_value else default,
                            help=f"{help_text} [env {_env_name(name)}]")
        return
    kind = _providers if name == "providers" else Path if isinstance(default, Path) else type(default)
    if name == "providers":
        default = ",".join(default)  # argparse converts string defaults with `type`, and shows them readably
    env_value = os.environ.get(_env_name(name))
    parser.add_argument(f"--{name.replace('_', '-')}", type=kind, metavar=name.upper(),
                        default=kind(env_value) if env_value is not None else default,
                        help=f"{help_text} [env {_env_name(name)}]")


def parse(argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        prog="metalearn-server",
        description="Serve few-shot classification (metalearn.v1) over gRPC from an ONNX model repository.",
        epilog="Every flag can also be set by the environment variable METALEARN_<FLAG> "
               "(e.g. METALEARN_METRICS_PORT=9100); a flag given on the command line wins.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    defaults, limits = Settings(), Limits()
    for item in fields(Settings):
        if item.name != "limits":
            _add_flag(parser, item.name, getattr(defaults, item.name), HELP[item.name])
    for item in fields(Limits):
        _add_flag(parser, item.name, getattr(limits, item.name), "per-request limit")
    args = vars(parser.parse_args(argv))
    if args["workers"] < 0 or args["batch_items"] < 0:
        parser.error("--workers and --batch-items must be 0 (automatic) or more")
    if args["max_inflight_items"] <= 0 or args["max_inflight_bytes"] <= 0:
        parser.error("--max-inflight-items and --max-inflight-bytes must be positive")
    if bool(args["tls_cert"]) != bool(args["tls_key"]):
        parser.error("--tls-cert and --tls-key go together")
    if args["tls_client_ca"] and not args["tls_cert"]:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    return Settings(**{k: v for k, v in args.items() if not hasattr(limits, k)},
                    limits=Limits(**{f.name: args[f.name] for f in fields(Limits)}))
