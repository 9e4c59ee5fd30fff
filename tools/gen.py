"""Generates the committed artefacts from protos/: the Python stubs, the TypeScript client's
messages and services, the Envoy descriptor and the OpenAPI description.

python tools/gen.py          # write clients/python/embedd/v1/*, clients/typescript/src/gen/**,
                             # envoy/embedd.binpb and envoy/openapi.json
python tools/gen.py --check  # exit 1 and list the files that differ (drift)

The TypeScript code comes from protoc-gen-es (pinned in clients/typescript/package-lock.json,
installed by `make install`), run by the same protoc as the Python stubs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import openapi  # tools/openapi.py: envoy/openapi.json
from embedd_server.devtools.envoy import build_descriptor

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PY_STUBS = Path("clients/python/embedd/v1")
TS_GEN = Path("clients/typescript/src/gen")
DESCRIPTOR = Path("envoy/embedd.binpb")
OPENAPI = Path("envoy/openapi.json")
PROTOC_GEN_ES = ROOT / "clients" / "typescript" / "node_modules" / ".bin" / "protoc-gen-es"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    # protoc finds protoc-gen-mypy on PATH; it lives next to this interpreter.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _sources(package: str) -> list[str]:
    return sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / package).glob("*.proto"))


def _protoc(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", *args], check=True, env=_env())


def generate(out: Path) -> None:
    """Writes every generated file under `out`, laid out as in the repository."""
    if not PROTOC_GEN_ES.exists():
        raise SystemExit(f"{PROTOC_GEN_ES.relative_to(ROOT)} is missing: run `make install`")
    embedd = _sources("embedd/v1")
    stubs = out / "clients" / "python"
    stubs.mkdir(parents=True)
    _protoc(
        f"--python_out={stubs}",
        f"--grpc_python_out={stubs}",
        f"--mypy_out=quiet:{stubs}",
        f"--mypy_grpc_out=quiet:{stubs}",
        *embedd,
    )
    # The TypeScript code needs the google/api and google/rpc files too: the embedd files
    # import them, and clients read ErrorInfo / BadRequest from error details.
    ts = out / TS_GEN
    ts.mkdir(parents=True)
    _protoc(
        f"--plugin=protoc-gen-es={PROTOC_GEN_ES}",
        f"--es_out={ts}",
        "--es_opt=target=ts,import_extension=js",
        *embedd,
        *_sources("google/api"),
        *_sources("google/rpc"),
    )
    build_descriptor(out / DESCRIPTOR)
    (out / OPENAPI).write_text(openapi.generate())


def generated_files(root: Path) -> set[Path]:
    """The generated files under a tree (relative paths); `__init__.py` files are kept by hand."""
    files = {p.relative_to(root) for p in (root / PY_STUBS).glob("*_pb2*")}
    files |= {p.relative_to(root) for p in (root / TS_GEN).rglob("*_pb.ts")}
    files |= {f for f in (DESCRIPTOR, OPENAPI) if (root / f).exists()}
    return files


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        drift = sorted(
            str(path)
            for path in generated_files(fresh) | generated_files(ROOT)
            if not (ROOT / path).exists()
            or not (fresh / path).exists()
            or not filecmp.cmp(ROOT / path, fresh / path, shallow=False)
        )
    for path in drift:
        print(f"out of date: {path}")
    if drift:
        print("run `make gen` and commit the result")
    return 1 if drift else 0


def write() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        for old in generated_files(ROOT):
            (ROOT / old).unlink()
        for new in generated_files(fresh):
            (ROOT / new).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(fresh / new, ROOT / new)
    (ROOT / PY_STUBS / "__init__.py").touch()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true")
    if parser.parse_args().check:
        return check()
    write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
