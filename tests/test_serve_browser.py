"""The page at ``/`` of ``s4g-serve`` in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``,
driven by selenium): the gallery map is drawn from the service's own coordinates, a chosen photo shows its
top-k tiles (thumbnails, scores) on the map, and nothing is loaded from another host."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 's4g[serve]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install 's4g[test]')")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install -y chromium "
                "chromium-driver; .ci/run does this)", allow_module_level=True)

from helpers.gallery import MODEL  # noqa: E402
from helpers.server import ENCODER, shared_server  # noqa: E402
from s4g_engine.localiser import Localiser  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,800"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def test_dropping_a_photo_shows_the_top_k_tiles_on_the_gallery_map(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv = shared_server()
    browser.get(srv.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#map circle.tile")) == 60)
    assert "60 tiles" in browser.find_element(By.ID, "status").text
    k_box = browser.find_element(By.ID, "k")
    k_box.clear()
    k_box.send_keys("4")
    photo = srv.queries[3]
    browser.find_element(By.ID, "file").send_keys(str(photo))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results li")) == 4)
    shown = [li.get_attribute("data-id") for li in browser.find_elements(By.CSS_SELECTOR, "#results li")]
    with Localiser.from_dir(MODEL, device="cpu", backend=ENCODER[1], precision=ENCODER[3]) as loc:
        loc.load_index(srv.index)
        want = loc.localise([str(photo)], k=4)
    assert shown == want.ids[0]
    marked = [c.get_attribute("data-id") for c in browser.find_elements(By.CSS_SELECTOR, "#map circle.cand")]
    assert sorted(marked) == sorted(want.ids[0])
    # Every thumbnail really loaded (decoded by the browser), and the scores are printed.
    wait.until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#results img')].every(i => i.complete && i.naturalWidth > 0)"))
    first = browser.find_element(By.CSS_SELECTOR, "#results li .info").text
    assert f"score {float(want.scores[0, 0]):.4f}" in first
    browser.save_screenshot(str(tmp_path / "page.png"))  # kept in pytest's temp folder, for a person to look at
    # Offline: every resource the page loaded came from the service itself.
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(srv.url) for u in urls), urls
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


def test_a_refused_photo_is_explained_on_the_page(browser, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv = shared_server()
    browser.get(srv.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: "tiles" in d.find_element(By.ID, "status").text)
    bad = tmp_path / "notes.jpg"
    bad.write_bytes(b"this is not a photo")
    browser.find_element(By.ID, "file").send_keys(str(bad))
    wait.until(lambda d: "refused" in d.find_element(By.ID, "status").text)
    assert "415" in browser.find_element(By.ID, "status").text
