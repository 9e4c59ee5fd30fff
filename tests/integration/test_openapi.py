"""Envoy serves the OpenAPI description and the /docs reference page (no server code), and the
page renders every operation in a real headless browser (Debian's chromium), loading nothing
from anywhere but Envoy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
from embedd_server.devtools.envoy import EnvoyProcess
from playwright.async_api import Request, async_playwright

from tests.harness import ROOT, rest_error

DESCRIPTION = ROOT / "envoy" / "openapi.json"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# What a root, offline, headless machine needs (background networking only meets refusals).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def operation_ids() -> set[str]:
    doc = json.loads(DESCRIPTION.read_text())
    return {op["operationId"] for item in doc["paths"].values() for op in item.values()}


async def test_description_and_docs_are_served(rest: httpx.AsyncClient) -> None:
    r = await rest.get("/v1/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.content == DESCRIPTION.read_bytes()
    assert (await rest.head("/v1/openapi.json")).status_code == 200
    # Other methods are no file: the transcoder's 404 in the Embedd error body.
    status, code, _ = rest_error(await rest.post("/v1/openapi.json"))
    assert (status, code) == (404, "not_found")

    page = await rest.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'spec-url="/v1/openapi.json"' in page.text and 'src="/docs/redoc.standalone.js"' in page.text
    script = await rest.get("/docs/redoc.standalone.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert script.content == (ROOT / "envoy" / "redoc.standalone.js").read_bytes()


async def test_docs_page_renders_every_operation(envoy: EnvoyProcess, tmp_path: Path) -> None:
    expected = operation_ids()
    assert expected
    loaded: list[str] = []
    blocked: list[tuple[str, str | None]] = []

    def failed(request: Request) -> None:
        blocked.append((request.url, request.failure))

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("requestfinished", lambda request: loaded.append(request.url))
            page.on("requestfailed", failed)
            await page.goto(f"{envoy.http_url}/docs")
            # Redoc gives each operation a section `tag/<Service>/operation/<operationId>`.
            sections = """n => new Set([...document.querySelectorAll('[data-section-id]')]
                .map(e => e.dataset.sectionId)
                .filter(id => /^tag\\/[^/]+\\/operation\\//.test(id))).size >= n"""
            await page.wait_for_function(sections, arg=len(expected), timeout=30_000)
            rendered = await page.eval_on_selector_all(
                "[data-section-id*='/operation/']",
                "els => els.map(e => e.dataset.sectionId.split('/operation/')[1])",
            )
            await page.screenshot(path=str(tmp_path / "docs.png"))
            title = await page.text_content("h1")
        finally:
            await browser.close()
    assert set(rendered) == expected
    assert title is not None and "Embedd vector sync API" in title
    # Everything came from Envoy; Redoc's one outside fetch (its logo) is refused by the CSP.
    assert all(url.startswith((envoy.http_url, "blob:", "data:")) for url in loaded), loaded
    assert {url.split(":", 1)[0] for url, _ in blocked} <= {"https"}
    assert all(reason == "csp" for _, reason in blocked), blocked
    print(f"screenshot: {tmp_path / 'docs.png'}")
