"""The tab as a person uses it, in headless Chromium: drop a photo, invert, click a name chip.

Needs Playwright (`pip install playwright`) and a Chromium binary (Debian's `chromium`, or
CAPTINV_CHROMIUM); skipped with the reason when either is missing. The screenshot is saved in
the test's temporary folder and its path printed.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image
from skimage import data

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
CHROMIUM = os.environ.get("CAPTINV_CHROMIUM") or shutil.which("chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


@pytest.mark.skipif(
    not CHROMIUM, reason="no Chromium binary (install Debian's chromium or set CAPTINV_CHROMIUM)"
)
def test_invert_in_the_tab_then_send_a_name_to_txt2img(server, tmp_path):
    if server.family != "sd1":
        pytest.skip("the page is the same for every family; SD1 covers it")
    photo = tmp_path / "Kitty.png"
    Image.fromarray(np.asarray(data.chelsea())).save(photo)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.goto(server.url, timeout=120_000)
        page.get_by_role("button", name="Invert from Caption").click()
        page.set_input_files("#captinv_image input[type=file]", str(photo))
        page.locator("#captinv_image img").first.wait_for()  # the upload is read before the run can send it
        sync_api.expect(page.locator("#captinv_name textarea")).to_have_value("Kitty")  # from the file name
        page.fill("#captinv_caption textarea", "a tabby cat")
        page.fill("#captinv_steps input[type=number]", "3")
        page.locator("#captinv_steps input[type=number]").press("Enter")
        page.get_by_text("Advanced", exact=True).click()
        page.fill("#captinv_resolution input", "64")
        page.locator("#captinv_resolution input").press("Enter")
        page.click("#captinv_run")
        chip = page.locator("#captinv_chips button.captinv-chip", has_text="kitty-all")
        page.wait_for_function(
            "document.querySelector('#captinv_chips button') || document.querySelector('#captinv_info .error')",
            timeout=300_000,
        )
        assert page.locator("#captinv_info .error").count() == 0, page.locator(
            "#captinv_info"
        ).first.inner_text()
        screenshot = tmp_path / "captinv-tab.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")
        assert page.locator("#captinv_chips button.captinv-chip").count() == 4

        chip.click()

        prompt = page.locator("#txt2img_prompt textarea")
        sync_api.expect(prompt).to_have_value("kitty-all")
        assert prompt.is_visible()  # switched to the txt2img tab
        browser.close()
    assert (server.data / "embeddings" / "kitty-all.safetensors").is_file()
