"""``metalearn``: classify image files from the command line.

    metalearn classify --support letters/ learner1.png learner2.png
    metalearn models
    metalearn health

``--support`` is a folder with one sub-folder per class, named by the class
and holding that class's example images (PNG or JPEG): the layout a teacher
or analyst already keeps.  Classes are listed in sorted folder-name order.

Every error is one ``error: ...`` line on stderr and exit status 2; ``health``
exits 1 whenever the answer is not SERVING, a server not reachable included.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from metalearn_client.client import Client
from metalearn_client.errors import MetalearnError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
#: Shown for a query unlike every support class (see --rejection-threshold).
UNKNOWN = "(unknown)"


class CommandError(Exception):
    """What the user gave cannot work; the message says what to give instead."""


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors as the one ``error:`` line every other error is."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def read_support_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """Image paths and their labels from ``folder/<label>/<image>``, classes in sorted folder-name order
    (the API itself orders classes by first appearance, so this order is the folder names')."""
    if not folder.is_dir():
        raise CommandError(f"--support {folder} is not a folder")
    paths, labels = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            paths.append(image)
            labels.append(class_dir.name)
    if not paths:
        raise CommandError(f"--support {folder} has no <class>/<image>.png|.jpg files")
    return paths, labels


def check_queries(queries: list[Path]) -> None:
    """Each query must be a readable file: caught before any call, so no traceback and no wasted request."""
    for path in queries:
        if path.is_dir():
            raise CommandError(f"query {path} is a folder; give image files (a folder of classes goes to --support)")
        if not path.is_file():
            raise CommandError(f"query file {path} does not exist")


def classify(client: Client, args: argparse.Namespace) -> None:
    paths, labels = read_support_folder(args.support)
    check_queries(args.queries)
    result = client.classify(paths, labels, args.queries, model=args.model, version=args.model_version,
                             method=args.method, distance=args.distance, steps=args.steps,
                             learning_rate=args.learning_rate, top_k=args.top_k,
                             rejection_threshold=args.rejection_threshold)
    if args.json:
        print(json.dumps({
            "model": result.model, "model_version": result.model_version, "method": result.method,
            "classes": result.classes,
            "predictions": [{"query": str(path), "label": p.label, "unknown": p.unknown, "known_score": p.known_score,
                             "scores": dict(zip(result.classes, p.scores.tolist()))}
                            for path, p in zip(args.queries, result.predictions)],
        }, indent=2))
        return
    for path, prediction in zip(args.queries, result.predictions):
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k)
        label = UNKNOWN if prediction.unknown else prediction.label
        print(f"{path}\t{label}\t{ranked}")


def models(client: Client, args: argparse.Namespace) -> None:
    for summary in client.list_models():
        detail = client.get_model(summary.name)
        default = " (default)" if summary.is_default else ""
        print(f"{summary.name}{default}\tversions {', '.join(summary.versions)}\t"
              f"input {list(detail.input.shape)}\tembedding {detail.embedding_size}\t"
              f"providers {', '.join(detail.execution_providers)}")


def health(client: Client, args: argparse.Namespace) -> None:
    status = client.health(args.service)
    print(status)
    if status != "SERVING":
        raise SystemExit(1)


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="metalearn", description=__doc__,
                  epilog="A bearer token, if the server wants one, is read from METALEARN_TOKEN.",
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    root.add_argument("--target", default=os.environ.get("METALEARN_TARGET", "localhost:50051"),
                      help="server address host:port [env METALEARN_TARGET] (default: %(default)s)")
    root.add_argument("--timeout", type=float, default=30.0, help="deadline per call in seconds (default: %(default)s)")
    root.add_argument("--tls", action="store_true", help="connect over TLS")
    root.add_argument("--tls-ca", type=Path, help="PEM CA bundle to trust (implies --tls; default: system roots)")
    root.add_argument("--tls-cert", type=Path, help="PEM client certificate, for mutual TLS")
    root.add_argument("--tls-key", type=Path, help="PEM key of --tls-cert")
    commands = root.add_subparsers(dest="command", required=True)

    run = commands.add_parser("classify", help="label query images against a support folder")
    run.add_argument("--support", type=Path, required=True, help="folder of <class>/<image> files")
    run.add_argument("queries", nargs="+", type=Path, help="query image files")
    run.add_argument("--model", default="", help="model name (default: the server's default)")
    run.add_argument("--model-version", default="", help="model version (default: the latest)")
    run.add_argument("--method", choices=["prototype", "finetune", "transductive"], help="default: the model's")
    run.add_argument("--distance", choices=["euclidean", "cosine"], help="default: the model's")
    run.add_argument("--steps", type=int, help="fast-adaptation steps (finetune) or refinement rounds (transductive)")
    run.add_argument("--learning-rate", type=float, help="fast-adaptation learning rate (finetune)")
    run.add_argument("--top-k", type=int, default=3, help="best classes shown per query (default: %(default)s)")
    run.add_argument("--rejection-threshold", type=float,
                     help=f"queries whose known-score is below it print as {UNKNOWN} "
                          "(default: the model's; 0: never)")
    run.add_argument("--json", action="store_true", help="print JSON instead of one line per query")
    run.set_defaults(handler=classify)

    commands.add_parser("models", help="list the models served").set_defaults(handler=models)

    check = commands.add_parser("health", help="SERVING or not; exit status 1 unless SERVING")
    check.add_argument("--service", default="", help="a service name (default: the whole server)")
    check.set_defaults(handler=health)
    return root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        read = lambda path: path.read_bytes() if path else None  # noqa: E731
        with Client(args.target, timeout=args.timeout, token=os.environ.get("METALEARN_TOKEN"), tls=args.tls,
                    tls_ca=read(args.tls_ca), tls_cert=read(args.tls_cert), tls_key=read(args.tls_key)) as client:
            args.handler(client, args)
    except MetalearnError as error:
        print(f"error: {error}", file=sys.stderr)
        # A probe asks only "SERVING or not": nothing listening is "not", as --help promises.
        raise SystemExit(1 if args.command == "health" else 2) from None
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as error:  # a file that vanished or cannot be read (permissions), a TLS file among them
        print(f"error: cannot read {error.filename}: {error.strerror}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
