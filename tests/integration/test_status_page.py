"""The status page in a real browser: headless Chromium (Debian's package) opens
``/admin/status.html`` of a sidecar in front of OpenBao, answers the page's Basic challenge with
the admin token, and the rendered DOM shows each secret's class, owner, version and state, the
store node, and no value. A screenshot is taken (`make docs-images` keeps it in the docs)."""

from __future__ import annotations

import asyncio
import shutil
from html.parser import HTMLParser
from pathlib import Path

import aiohttp
import pytest

from sidecar.dev.openbao import DevOpenBao, free_port
from tests.conftest import ADMIN_TOKEN, AUTH, CLASSES, config, docs_image, running
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.timeout(120)

VALUE = "status-page-value-3f9b"
QUICK = {
    "standard": {**CLASSES["standard"], "refresh_interval": "1s", "max_cache_age": "1h"},
    "payments": {**CLASSES["payments"], "refresh_interval": "1s"},
}


class Rows(HTMLParser):
    """The secrets table's rows (by data-path) and the summary, from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.summary = ""
        self._row: str | None = None
        self._in_summary = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "tr" and found.get("data-path"):
            self._row = str(found["data-path"])
            self.rows[self._row] = []
        if tag == "p" and found.get("id") == "summary":
            self._in_summary = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "p":
            self._in_summary = False

    def handle_data(self, data: str) -> None:
        if self._row is not None and data.strip():
            self.rows[self._row].append(data.strip())
        if self._in_summary:
            self.summary += data


async def _chromium(*args: str) -> str:
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: `make test` installs Debian's chromium package"
    process = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-gpu",
        "--no-first-run",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0
    return out.decode()


async def test_the_status_page_in_chromium_shows_states_and_no_value(
    openbao: DevOpenBao, store_token_file: Path, tmp_path: Path, uid: str
):
    openbao.kv_put(f"{uid}/db", {"password": VALUE})
    openbao.kv_put(f"{uid}/payments/key", {"key": VALUE})
    proxy = FaultProxy(openbao.port).start()
    try:
        document = config(
            proxy.addr,
            store_token_file,
            tmp_path,
            classes=QUICK,
            listen=f"127.0.0.1:{free_port()}",
            metrics_listen="127.0.0.1:0",
            backend={"timeout": "500ms"},
        )
        async with running(document) as (_, api, _ops), aiohttp.ClientSession() as session:
            for path in ("db", "payments/key"):
                reply = await session.get(f"{api}/secrets/secret/{uid}/{path}", headers=AUTH)
                assert reply.status == 200
            proxy.set("reset")
            proxy.cut_all()
            await asyncio.sleep(1.2)  # past refresh_interval: the store cannot confirm
            stale = await session.get(f"{api}/secrets/secret/{uid}/db", headers=AUTH)
            assert stale.headers["X-Sidecar-Cache"] == "STALE"
            refused = await session.get(f"{api}/secrets/secret/{uid}/payments/key", headers=AUTH)
            assert refused.status == 503

            host = api.removeprefix("http://")
            url = f"http://oncall:{ADMIN_TOKEN}@{host}/admin/status.html"
            dom = await _chromium("--dump-dom", url)
            shot = tmp_path / "status.png"
            await _chromium(f"--screenshot={shot}", "--window-size=1280,720", url)
    finally:
        proxy.stop()
    page = Rows()
    page.feed(dom)
    assert "2 secrets cached" in page.summary
    db, payments = page.rows[f"secret/{uid}/db"], page.rows[f"secret/{uid}/payments/key"]
    assert db[:5] == [f"secret/{uid}/db", "standard", "team-test", "1", "failing"]
    assert "connection" in db
    assert payments[:5] == [
        f"secret/{uid}/payments/key",
        "payments",
        "team-payments",
        "1",
        "failing",
    ]
    assert proxy.addr in dom and "down" in dom  # the store node, not answering
    assert VALUE not in dom
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    keep = docs_image("status-page.png")
    if keep:  # `make docs-images`: the screenshot in docs/operations.md
        shutil.copyfile(shot, keep)
