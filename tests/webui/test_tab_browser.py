"""The tab as a person uses it, in headless Chromium: drop a photo, invert, click a name chip;
and a Perfusion card in txt2img's Extra Networks.

Needs Playwright (`pip install playwright`) and a Chromium binary (Debian's `chromium`, or
CAPTINV_CHROMIUM); skipped with the reason when either is missing. The screenshot is saved in
the test's temporary folder and its path printed.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from tests.webui.photo import chelsea, chelsea_b64

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


def _fill_the_tab(page, server, photo) -> None:
    """Open the tab, drop the photo, type a caption, 3 steps at 64 px."""
    page.goto(server.url, timeout=120_000)
    page.get_by_role("button", name="Invert from Caption").click()
    page.set_input_files("#captinv_image input[type=file]", str(photo))
    page.locator("#captinv_image img").first.wait_for()  # the upload is read before the run can send it
    sync_api.expect(page.locator("#captinv_name textarea")).to_have_value(photo.stem)  # from the file name
    page.fill("#captinv_caption textarea", "a tabby cat")
    page.fill("#captinv_steps input[type=number]", "3")
    page.locator("#captinv_steps input[type=number]").press("Enter")
    page.get_by_text("Advanced", exact=True).click()
    page.fill("#captinv_resolution input", "64")
    page.locator("#captinv_resolution input").press("Enter")


def _run_and_wait(page, tmp_path, screenshot: str) -> None:
    page.click("#captinv_run")
    page.wait_for_function(
        "document.querySelector('#captinv_chips button') || document.querySelector('#captinv_info .error')",
        timeout=600_000,
    )
    assert page.locator("#captinv_info .error").count() == 0, page.locator("#captinv_info").first.inner_text()
    path = tmp_path / screenshot
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


@pytest.fixture
def page(server):
    """A headless Chromium page, for SD1 only: the page is the same for every family."""
    if not CHROMIUM:
        pytest.skip("no Chromium binary (install Debian's chromium or set CAPTINV_CHROMIUM)")
    if server.family != "sd1":
        pytest.skip("the page is the same for every family; SD1 covers it")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1100})
        finally:
            browser.close()


def test_invert_in_the_tab_then_send_a_name_to_txt2img(server, page, tmp_path):
    photo = tmp_path / "Kitty.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    _run_and_wait(page, tmp_path, "captinv-tab.png")
    assert page.locator("#captinv_chips button.captinv-chip").count() == 4

    page.locator("#captinv_chips button.captinv-chip", has_text="kitty-all").click()

    prompt = page.locator("#txt2img_prompt textarea")
    sync_api.expect(prompt).to_have_value("kitty-all")
    assert prompt.is_visible()  # switched to the txt2img tab
    assert (server.data / "embeddings" / "kitty-all.safetensors").is_file()


def test_train_a_perfusion_concept_in_the_tab_and_send_its_prompt(server, page, tmp_path):
    photo = tmp_path / "Tiger.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    page.get_by_label("Perfusion concept (K/V edit)").check()
    page.locator("#captinv_perfusion").get_by_text("Perfusion", exact=True).first.click()
    page.fill("#captinv_covariance_prompts input", "32")
    page.locator("#captinv_covariance_prompts input").press("Enter")
    _run_and_wait(page, tmp_path, "captinv-perfusion.png")

    page.locator("#captinv_chips button.captinv-chip").first.click()

    sync_api.expect(page.locator("#txt2img_prompt textarea")).to_have_value(
        "a tabby tiger <perfusion:tiger:0.7>"
    )
    assert (server.data / "models" / "perfusion" / "tiger.safetensors").is_file()


def test_a_perfusion_card_in_extra_networks_adds_its_tag_and_word(server, page, tmp_path):
    body = {"image": chelsea_b64(), "caption": "a cat", "name": "stripes", "steps": 3, "resolution": 64}
    status, answer = server.call("/captinv/v1/perfusion", body | {"covariance_prompts": 32})
    assert status == 200, answer
    page.goto(server.url, timeout=120_000)
    page.locator("#txt2img_extra_tabs button", has_text="Perfusion").first.click()
    page.click("#txt2img_perfusion_extra_refresh")  # the concept is newer than the page
    card = page.locator('#txt2img_perfusion_cards_html .card[data-name="stripes"]')
    card.wait_for(timeout=120_000)
    page.screenshot(path=str(tmp_path / "perfusion-cards.png"), full_page=True)

    card.click()

    prompt = page.locator("#txt2img_prompt textarea")
    # the WebUI puts its separator (a space) before what a card adds, even to an empty prompt
    sync_api.expect(prompt).to_have_value(re.compile(r"^\s*<perfusion:stripes:0\.7> stripes$"))
    card.click()  # a second click takes tag and word out again
    sync_api.expect(prompt).to_have_value(re.compile(r"^\s*$"))
