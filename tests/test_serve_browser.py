"""The web page in a real browser: Playwright driving Debian's headless Chromium (Playwright's own browser
download cannot work here, so `executable_path` points at the system binary; `.ci/run` installs it)."""
from __future__ import annotations

import os
import shutil

import pytest

pytest.importorskip("fastapi", reason="the service needs the [serve] extra")
try:
    from playwright import sync_api
except ImportError:
    sync_api = None

from indexing.service.app import ServeConfig, create_app  # noqa: E402
from helpers import TOKEN, live_server  # noqa: E402

CHROMIUM = next((path for path in (os.environ.get("JSAR_CHROMIUM"), shutil.which("chromium"),
                                   shutil.which("chromium-browser"), "/usr/bin/chromium") if path and os.path.isfile(path)),
                None)
MISSING = ("playwright is not installed (pip install playwright)" if sync_api is None else
           "no Chromium binary (Debian: apt-get install -y chromium; or set JSAR_CHROMIUM)" if CHROMIUM is None else None)
REQUIRED = os.environ.get("JSAR_REQUIRE_BROWSER") == "1"  # CI sets it: a missing browser fails instead of skipping
pytestmark = pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=MISSING or "")
K = 6


@pytest.fixture(scope="module", autouse=True)
def browser_is_there():
    if MISSING is not None:
        pytest.fail(f"JSAR_REQUIRE_BROWSER=1 and {MISSING}", pytrace=False)


@pytest.fixture(scope="module")
def page_url(engine):
    with live_server(create_app(engine, ServeConfig(token=TOKEN))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


def loaded_images(page, selector: str) -> int:
    return page.evaluate("(s) => [...document.querySelectorAll(s)].filter(i => i.complete && i.naturalWidth > 0).length",
                         selector)


def test_dropping_a_wav_shows_k_image_hits_with_their_maps(browser, page_url, tiny_index, tmp_path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{page_url}/?token={TOKEN}")
    page.wait_for_function("document.getElementById('status').textContent.includes('items')")
    page.fill("#sound-k", str(K))
    page.set_input_files("#sound-file", str(tiny_index[1] / "audio" / "synth_000003.wav"))
    page.wait_for_function(f"document.querySelectorAll('#image-hits .hit img.overlay').length === {K}")
    page.wait_for_function(f"[...document.querySelectorAll('#image-hits img.overlay')]"
                           f".filter(i => i.complete && i.naturalWidth > 0).length === {K}", timeout=30_000)
    assert loaded_images(page, "#image-hits img.overlay") == K
    page.wait_for_function("document.querySelector('#image-hits img.query-picture').naturalWidth > 0")
    assert page.evaluate("document.getElementById('image-hits').firstElementChild.id") == "query-tile"
    assert "query" in page.inner_text("#query-tile .rank")
    below = page.evaluate("document.querySelector('#query-tile .meta').getBoundingClientRect().top >= "
                          "document.querySelector('#query-tile .pic').getBoundingClientRect().bottom - 1")
    assert below, "the query tile's caption sits under its picture, as on every hit"
    sources = page.eval_on_selector_all("#image-hits img.overlay", "images => images.map(i => i.src)")
    assert all("/maps/" in source and source.endswith(".png") for source in sources)
    assert "hits in" in page.inner_text("#sound-error")
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000
    page.close()


def test_dropping_an_image_shows_playable_sound_hits_with_attention_strips(browser, page_url, tiny_index):
    page = browser.new_page()
    page.goto(f"{page_url}/?token={TOKEN}")
    page.click("#tab-image")
    page.fill("#image-k", "3")
    page.set_input_files("#image-file", str(tiny_index[1] / "frames" / "synth_000004.jpg"))
    page.wait_for_function("[...document.querySelectorAll('#sound-hits img.strip')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length === 3", timeout=30_000)
    assert page.eval_on_selector_all("#sound-hits audio", "players => players.map(p => p.src)")[0].endswith("/audio")
    assert page.evaluate("document.getElementById('sound-hits').firstElementChild.id") == "query-row"
    page.wait_for_function("document.querySelector('#query-row img.picture').naturalWidth > 0")
    page.close()


def test_a_wrong_file_shows_the_services_one_line_error(browser, page_url, tiny_index):
    page = browser.new_page()
    page.goto(f"{page_url}/?token={TOKEN}")
    page.set_input_files("#sound-file", str(tiny_index[1] / "frames" / "synth_000001.jpg"))
    page.wait_for_function("document.getElementById('sound-error').textContent.includes('expected sound')")
    assert page.locator("#image-hits .hit").count() == 0
    page.close()


def test_the_token_leaves_the_address_bar_and_the_favicon_loads(browser, page_url):
    page = browser.new_page()
    missing = []
    page.on("response", lambda response: missing.append(response.url) if response.status >= 400 else None)
    page.goto(f"{page_url}/?token={TOKEN}")
    page.wait_for_function("document.getElementById('status').textContent.includes('items')")
    assert "token" not in page.url and page.url.rstrip("/") == page_url
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert page.evaluate("fetch('favicon.ico').then(r => r.status)") == 200
    assert missing == []
    page.close()


def test_a_failed_search_clears_the_previous_hits_and_ends_the_spinner(browser, page_url, tiny_index):
    page = browser.new_page()
    page.goto(f"{page_url}/?token={TOKEN}")
    page.wait_for_function("document.getElementById('status').textContent.includes('items')")
    page.fill("#sound-k", "3")
    page.set_input_files("#sound-file", str(tiny_index[1] / "audio" / "synth_000003.wav"))
    page.wait_for_function("document.querySelectorAll('#image-hits .hit:not(.is-query)').length === 3")
    page.set_input_files("#sound-file", str(tiny_index[1] / "frames" / "synth_000001.jpg"))  # wrong type
    page.wait_for_function("document.getElementById('sound-error').textContent.includes('expected sound')")
    assert page.locator("#image-hits .hit").count() == 0
    assert "bad" in page.get_attribute("#sound-error", "class")

    page.set_input_files("#sound-file", str(tiny_index[1] / "audio" / "synth_000003.wav"))
    page.wait_for_function("document.querySelectorAll('#image-hits .hit:not(.is-query)').length === 3")
    page.route("**/search/audio", lambda route: route.abort())  # the network fails
    page.set_input_files("#sound-file", str(tiny_index[1] / "audio" / "synth_000004.wav"))
    page.wait_for_function("document.getElementById('sound-error').textContent.includes('did not answer')")
    assert "searching" not in page.inner_text("#sound-error")
    assert page.locator("#image-hits .hit").count() == 0
    page.close()


def test_hits_is_the_one_word_for_k_and_sound_rows_show_their_item_id(browser, page_url, tiny_index):
    page = browser.new_page()
    page.goto(f"{page_url}/?token={TOKEN}")
    page.wait_for_function("document.getElementById('status').textContent.includes('items')")
    page.fill("#sound-k", "0")
    page.set_input_files("#sound-file", str(tiny_index[1] / "audio" / "synth_000003.wav"))
    page.wait_for_function("document.getElementById('sound-error').textContent.includes('hits')")
    assert page.inner_text("#sound-error").startswith("hits: a whole number from 1 to 100")
    assert page.inner_text("label[for=sound-k]") == "hits"
    page.click("#tab-image")
    page.fill("#image-k", "2")
    page.set_input_files("#image-file", str(tiny_index[1] / "frames" / "synth_000004.jpg"))
    page.wait_for_function("document.querySelectorAll('#sound-hits .sound:not(.is-query)').length === 2")
    ids = page.eval_on_selector_all("#sound-hits .sound:not(.is-query) .id", "nodes => nodes.map(n => n.textContent)")
    assert len(ids) == 2 and all(i.startswith("synth_") for i in ids)
    page.close()
