"""``metalearn``: classify image files or texts from the command line.

    metalearn classify --support letters/ learner1.png learner2.png
    metalearn classify-text --model text-minilm --support topics/ "how do I convert a fraction to a decimal"
    metalearn classify-text --model text-minilm --support labelled.csv --queries-file questions.txt
    metalearn models
    metalearn health

``--support`` is a folder with one sub-folder per class, named by the class
and holding that class's example images (PNG or JPEG), or for texts one
``.txt`` file per example: the layout a teacher or analyst already keeps.
Classes are listed in sorted folder-name order. Texts can also come as a CSV
file with a ``text,label`` header or a JSON Lines file of
``{"text": ..., "label": ...}`` objects.

Every error is one ``error: ...`` line on stderr and exit status 2; ``health``
exits 1 whenever the answer is not SERVING, a server not reachable included.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from metalearn.v1 import model_pb2

from metalearn_client.client import Classification, Client
from metalearn_client.errors import MetalearnError
from metalearn_client.items import Texts

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


def read_labelled_texts(path: Path, need_labels: bool = True) -> tuple[list[str], list[str]]:
    """Texts and labels from a folder ``<label>/<example>.txt``, a CSV file with a ``text,label`` header, or a
    JSON Lines file of ``{"text", "label"}`` objects (a ``.txt`` file: one unlabelled text per line)."""
    if path.is_dir():
        texts, labels = [], []
        for class_dir in sorted(p for p in path.iterdir() if p.is_dir()):
            for example in sorted(class_dir.glob("*.txt")):
                texts.append(example.read_text(encoding="utf-8").strip())
                labels.append(class_dir.name)
        if not texts:
            raise CommandError(f"{path} has no <class>/<example>.txt files")
        return texts, labels
    if not path.is_file():
        raise CommandError(f"{path} is neither a folder nor a file")
    suffix = path.suffix.lower()
    if suffix == ".txt" and not need_labels:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        return [line for line in lines if line], []
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.DictReader(stream))
    elif suffix in (".jsonl", ".ndjson"):
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise CommandError(f"{path} line {number} is not JSON: {error}") from None
    else:
        raise CommandError(f"{path}: expected a folder, a .csv, a .jsonl{'' if need_labels else ' or a .txt'} file")
    wanted = ("text", "label") if need_labels else ("text",)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(not isinstance(row.get(key), str) for key in wanted):
            raise CommandError(f"{path} record {number} lacks {' and '.join(wanted)} (a CSV file needs the header "
                               "text,label)")
    if not rows:
        raise CommandError(f"{path} holds no records")
    return [row["text"] for row in rows], [row.get("label", "") for row in rows]


def classify(client: Client, args: argparse.Namespace) -> None:
    paths, labels = read_support_folder(args.support)
    check_queries(args.queries)
    result = client.classify(paths, labels, args.queries, model=args.model, version=args.model_version,
                             method=args.method, distance=args.distance, steps=args.steps,
                             learning_rate=args.learning_rate, top_k=args.top_k,
                             rejection_threshold=args.rejection_threshold)
    report(result, [str(path) for path in args.queries], args)


def classify_text(client: Client, args: argparse.Namespace) -> None:
    texts, labels = read_labelled_texts(args.support)
    queries = list(args.queries) + (read_labelled_texts(args.queries_file, need_labels=False)[0]
                                    if args.queries_file else [])
    if not queries:
        raise CommandError("give query texts as arguments or with --queries-file")
    result = client.classify(Texts(texts), labels, Texts(queries), model=args.model, version=args.model_version,
                             method=args.method, distance=args.distance, steps=args.steps,
                             learning_rate=args.learning_rate, top_k=args.top_k,
                             rejection_threshold=args.rejection_threshold)
    report(result, queries, args)


def report(result: Classification, queries: list[str], args: argparse.Namespace) -> None:
    """One line per query (its name, the label or UNKNOWN, the best scores), or all of it as JSON."""
    if args.json:
        print(json.dumps({
            "model": result.model, "model_version": result.model_version, "method": result.method,
            "classes": result.classes,
            "predictions": [{"query": str(path), "label": p.label, "unknown": p.unknown, "known_score": p.known_score,
                             "scores": dict(zip(result.classes, p.scores.tolist()))}
                            for path, p in zip(queries, result.predictions)],
        }, indent=2))
        return
    for path, prediction in zip(queries, result.predictions):
        ranked = ", ".join(f"{label} {score:.3f}" for label, score in prediction.top_k)
        label = UNKNOWN if prediction.unknown else prediction.label
        print(f"{path}\t{label}\t{ranked}")


def models(client: Client, args: argparse.Namespace) -> None:
    for summary in client.list_models():
        detail = client.get_model(summary.name)
        default = " (default)" if summary.is_default else ""
        print(f"{summary.name}{default}\tversions {', '.join(summary.versions)}\t"
              f"input {describe_input(detail)}\tembedding {detail.embedding_size}\t"
              f"providers {', '.join(detail.execution_providers)}")


def describe_input(detail: model_pb2.GetModelResponse) -> str:
    if detail.item_kind == model_pb2.ITEM_KIND_TEXT:
        return f"texts (up to {detail.text.max_tokens} tokens, {detail.text.max_bytes} bytes)"
    return str(list(detail.input.shape))


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
    add_classify_options(run)
    run.set_defaults(handler=classify)

    text = commands.add_parser("classify-text", help="label query texts against labelled example texts")
    text.add_argument("--support", type=Path, required=True,
                      help="folder of <class>/<example>.txt files, or a .csv (header text,label) or .jsonl file")
    text.add_argument("queries", nargs="*", help="query texts")
    text.add_argument("--queries-file", type=Path, help="more queries: a .txt file (one per line), .csv or .jsonl")
    add_classify_options(text)
    text.set_defaults(handler=classify_text)

    commands.add_parser("models", help="list the models served").set_defaults(handler=models)

    check = commands.add_parser("health", help="SERVING or not; exit status 1 unless SERVING")
    check.add_argument("--service", default="", help="a service name (default: the whole server)")
    check.set_defaults(handler=health)
    return root


def add_classify_options(run: argparse.ArgumentParser) -> None:
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
