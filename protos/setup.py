"""Builds ``metalearn.v1`` (messages, gRPC stubs and type stubs) from ``metalearn/v1/*.proto``.

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


def generate() -> None:
    out = HERE / GENERATED
    (out / "metalearn" / "v1").mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(HERE)) for p in (HERE / "metalearn" / "v1").glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    command = ["protoc", f"-I{HERE}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
               f"--pyi_out={out}", *protos]
    if protoc.main(command) != 0:
        raise SystemExit("protoc failed on " + " ".join(protos))
    (out / "metalearn" / "v1" / "py.typed").touch()


generate()
setup(
    packages=["metalearn.v1"],
    package_dir={"": str(GENERATED)},
    package_data={"metalearn.v1": ["*.pyi", "py.typed"]},
)
