"""Builds ``metalearn.v1`` (messages, gRPC stubs and type stubs) from ``metalearn/v1/*.proto``,
and ``metalearn.kserve.v2`` from the KServe v2 protocol's ``grpc_service.proto``.

Nothing generated is committed: every build runs ``grpc_tools.protoc`` (a
build requirement, see pyproject.toml) into ``build/generated`` and packages
that.  ``metalearn`` is a namespace package shared with the training toolkit,
which is why no ``metalearn/__init__.py`` is written.
"""
from pathlib import Path

from grpc_tools import protoc
from setuptools import setup

HERE = Path(__file__).resolve().parent
GENERATED = Path("build") / "generated"


PACKAGES = ["metalearn.v1", "metalearn.kserve.v2"]


def generate() -> None:
    out = HERE / GENERATED
    folders = [Path(*package.split(".")) for package in PACKAGES]
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(HERE)) for folder in folders for p in (HERE / folder).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    command = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
               f"--pyi_out={out}", *protos]
    if protoc.main(command) != 0:
        raise SystemExit("protoc failed on " + " ".join(protos))
    for folder in folders:
        (out / folder / "py.typed").touch()


generate()
setup(
    packages=PACKAGES,
    package_dir={"": str(GENERATED)},
    package_data={package: ["*.pyi", "py.typed"] for package in PACKAGES},
)
