"""Regenerate the Python code for every `.proto` file under this package.

    python -m wrenn.proto.generate

Needs the `dev` extra (grpcio-tools bundles protoc; protoc-gen-py and protoc-gen-connectrpc are the
plugins). Each tree below is one protoc include root, so that a file's descriptor name is the path that
peers expect (envd's files must be `process/process.proto` and `filesystem/filesystem.proto`, as in E2B).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: (protoc include root, files below it). envd's files must be named as E2B names them; ours carry the
#: package path (hostagent/v1/hostagent.proto).
ROOTS = ((HERE / "envd", "process/*.proto filesystem/*.proto"), (HERE, "hostagent/v1/*.proto"))


def _plugin(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).with_name(name))
    if not Path(found).exists():
        raise SystemExit(f"{name} not found: install the dev extra (pip install -e '.[dev]')")
    return found


def generate() -> list[Path]:
    """Run protoc over every root and return the generated files."""
    import grpc_tools  # dev-only dependency, imported here so the package never needs it

    wkt = Path(grpc_tools.__file__).parent / "_proto"
    # The plugins write package __init__.py files of their own; ours carry docstrings, so keep them.
    kept = {init: init.read_bytes() for init in HERE.rglob("__init__.py")}
    written: list[Path] = []
    for root, patterns in ROOTS:
        protos = sorted(
            p.relative_to(root).as_posix() for pattern in patterns.split() for p in root.glob(pattern)
        )
        if not protos:
            continue
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{root}",
            f"-I{wkt}",
            f"--plugin=protoc-gen-py={_plugin('protoc-gen-py')}",
            f"--plugin=protoc-gen-connectrpc={_plugin('protoc-gen-connectrpc')}",
            f"--py_out={root}",
            f"--connectrpc_out={root}",
            *protos,
        ]
        subprocess.run(cmd, check=True)
        for proto in protos:
            stem = root / proto[: -len(".proto")]
            written += [stem.with_name(stem.name + "_pb.py"), stem.with_name(stem.name + "_connect.py")]
        for proto in protos:
            for d in (root / proto).parents:
                if d == HERE.parent:
                    break
                init = d / "__init__.py"
                if not init.exists():
                    init.write_text("")
    for init, content in kept.items():
        init.write_bytes(content)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(HERE.parent.parent.parent))
