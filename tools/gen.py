"""Generates the committed artefacts from protos/: Python stubs, the Envoy descriptor and the
OpenAPI description.

python tools/gen.py          # write clients/python/embedd/v1/*, envoy/embedd.binpb, envoy/openapi.json
python tools/gen.py --check  # exit 1 and list the files that differ (drift)
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
STUBS = ROOT / "clients" / "python"
STUB_DIR = STUBS / "embedd" / "v1"
DESCRIPTOR = ROOT / "envoy" / "embedd.binpb"
BIN = Path(sys.executable).parent


def _env() -> dict[str, str]:
    # protoc finds protoc-gen-mypy on PATH; it lives next to this interpreter.
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def generate(out_stubs: Path, out_descriptor: Path) -> None:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "embedd" / "v1").glob("*.proto"))
    out_stubs.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTOS}",
            f"--python_out={out_stubs}",
            f"--grpc_python_out={out_stubs}",
            f"--mypy_out=quiet:{out_stubs}",
            f"--mypy_grpc_out=quiet:{out_stubs}",
            *sources,
        ],
        check=True,
        env=_env(),
    )
    # Envoy 1.40 rejects `response_body` on non-HttpBody fields; the descriptor it loads has
    # those removed and envoy.yaml unwraps the responses instead (see devtools/envoy.py).
    build_descriptor(out_descriptor)


def check() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        stubs, descriptor = Path(tmp) / "stubs", Path(tmp) / "embedd.binpb"
        generate(stubs, descriptor)
        fresh = stubs / "embedd" / "v1"
        drift = []
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in STUB_DIR.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
        }
        for name in sorted(names):
            ours, theirs = STUB_DIR / name, fresh / name
            if not ours.exists() or not theirs.exists() or not filecmp.cmp(ours, theirs, shallow=False):
                drift.append(f"clients/python/embedd/v1/{name}")
        if not DESCRIPTOR.exists() or not filecmp.cmp(DESCRIPTOR, descriptor, shallow=False):
            drift.append("envoy/embedd.binpb")
    if openapi.drifted():
        drift.append("envoy/openapi.json")
    for path in drift:
        print(f"out of date: {path}")
    if drift:
        print("run `make gen` and commit the result")
    return 1 if drift else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true")
    if parser.parse_args().check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), DESCRIPTOR)
        for old in STUB_DIR.glob("*_pb2*"):
            old.unlink()
        for new in (Path(tmp) / "embedd" / "v1").iterdir():
            shutil.copy(new, STUB_DIR / new.name)
    (STUB_DIR / "__init__.py").touch()
    openapi.write()
    return 0


if __name__ == "__main__":
    sys.exit(main())
