"""The TypeScript client (clients/typescript) against the real server: tsc type-checks and
compiles it, then Node's test runner runs the seed's steps 1-6 and a WatchTask stream over
gRPC (clients/typescript/test/seed.test.ts)."""

from __future__ import annotations

import asyncio
import os
import shutil

from tests.conftest import UserDb
from tests.harness import ROOT, Org

TS = ROOT / "clients" / "typescript"


async def _run(*argv: str, env: dict[str, str] | None = None, timeout_s: float = 180) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=TS,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{text}"
    return text


async def test_typescript_client_runs_the_seed_steps_over_grpc(org: Org, user_db: UserDb) -> None:
    node = shutil.which("node")
    assert node, "Node.js 20+ is needed for the TypeScript client's test"
    await _run(str(TS / "node_modules" / ".bin" / "tsc"), "-p", ".")
    env = {
        **os.environ,
        "EMBEDD_GRPC": org.grpc_target,
        "EMBEDD_API_KEY": org.key,
        "DEMO_DB_HOST": user_db.host,
        "DEMO_DB_PORT": str(user_db.port),
        "DEMO_DB_NAME": user_db.database,
        "DEMO_DB_USER": user_db.user,
        "DEMO_DB_PASSWORD": user_db.password,
        "EMBEDD_LOCAL_MODEL": "local-lexical-384",
    }
    out = await _run(node, "--test", "--test-reporter=spec", "dist/test/seed.test.js", env=env)
    assert "✔ the seed's steps 1-6 over gRPC" in out, out
    assert "fail 0" in out, out
