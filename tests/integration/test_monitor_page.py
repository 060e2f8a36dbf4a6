"""The built-in monitoring page in a real browser: Debian's headless Chromium, driven by
Playwright, against a real uvicorn server. The page loads and says there is no drift on
unchanged traffic; drifted records are posted; the page, refreshing on its own, shows
the alarm and names the drifted feature. The screenshot is the README's
(``ANOMALY_VAE_SCREENSHOT=docs/monitor.png`` writes it there)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.conftest import make_mixed
from tests.integration.conftest import Server
from tests.integration.test_drift_live import DRIFT_ENV, post

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Debian's Chromium as root on a closed network (see ../shared/DESIGN.md).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs it)")
def test_the_monitoring_page_shows_the_alarm_and_names_the_feature(store, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    root, _ = store
    srv = Server(root, "mixed", extra_env=DRIFT_ENV)
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests_out: list[str] = []
            page.on("request", lambda r: requests_out.append(r.url))
            page.goto(srv.url + "/monitor?refresh=0.5")
            assert page.title() == "anomaly-vae monitor"
            expect = sync_api.expect
            expect(page.locator("#model")).to_contain_text("mixed version 1", timeout=30_000)

            post(srv, make_mixed(400, seed=31))
            expect(page.locator("#alarm")).to_have_text("no drift", timeout=60_000)
            expect(page.locator("#records")).to_have_text("400", timeout=60_000)

            drifted = make_mixed(400, seed=32)
            drifted["c"] = drifted["c"] + 6.0
            post(srv, drifted)
            expect(page.locator("#alarm")).to_have_text("DRIFT", timeout=60_000)
            expect(page.locator("#drifted-features")).to_contain_text("c", timeout=60_000)
            expect(page.locator("#features tr.drift td").first).to_have_text("c")
            expect(page.locator("#martingale-text")).to_contain_text("ALARM", timeout=60_000)
            expect(page.locator("#records")).to_have_text("800", timeout=60_000)
            assert page.locator("#scores rect").count() > 10  # the score distribution drawn
            shot = tmp_path / "monitor.png"
            page.screenshot(path=str(shot), full_page=True)
            browser.close()
        # no external assets: every request the page made went to the service
        assert requests_out and all(u.startswith(srv.url) for u in requests_out), requests_out
        assert shot.stat().st_size > 10_000
        target = os.environ.get("ANOMALY_VAE_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, target)
    finally:
        srv.stop()
