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
import threading
import time

import pytest
from safetensors import safe_open

from tests.webui.calls import invert, run_folder
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


def _tab(page, name: str):
    """A top-level tab's button: a plain button under gradio 3, a button with role "tab" under
    gradio 4 (Forge, which also capitalises "Txt2img")."""
    label = re.compile(f"^{re.escape(name)}$", re.IGNORECASE)
    return page.get_by_role("tab", name=label).or_(page.get_by_role("button", name=label))


def _open_the_tab(page, server) -> None:
    """Load the page and open the tab, waiting (as long as the page load may take on a busy CPU) until
    the photo drop is there: the WebUI builds its page after the load event, and a whole-tier run
    once found no drop input within Playwright's default 30 s."""
    page.goto(server.url, timeout=120_000)
    _tab(page, "Invert from Caption").first.click(timeout=120_000)
    page.locator("#captinv_images input[type=file]").wait_for(state="attached", timeout=120_000)


def _drop(page, *photos) -> None:
    """Drop the photos and wait until the tab shows them (the upload is read before a run can send
    it). In whole-tier runs a drop sometimes never reached the gallery (none after a minute; the
    same tests alone pass, cause not found): the test then drops again, as a person would, at most
    twice more."""
    gallery = page.locator("#captinv_gallery img")
    for _ in range(3):
        page.set_input_files("#captinv_images input[type=file]", [str(photo) for photo in photos])
        try:
            sync_api.expect(gallery).to_have_count(len(photos), timeout=30_000)
            return
        except AssertionError:
            continue
    sync_api.expect(gallery).to_have_count(len(photos), timeout=30_000)


def _fill_the_tab(page, server, photo) -> None:
    """Open the tab, drop the photo, type a caption, 3 steps at 64 px."""
    _open_the_tab(page, server)
    _drop(page, photo)
    sync_api.expect(page.locator("#captinv_name textarea")).to_have_value(photo.stem)  # from the file name
    page.fill("#captinv_caption textarea", "a tabby cat")
    page.fill("#captinv_steps input[type=number]", "3")
    page.locator("#captinv_steps input[type=number]").press("Enter")
    page.get_by_text("Advanced", exact=True).click()
    page.fill("#captinv_resolution input", "64")
    page.locator("#captinv_resolution input").press("Enter")


MESSAGE = "#captinv_info .captinv-message, #captinv_info .captinv-error"


def _new_message(page, action) -> str:
    """Do `action`, then wait for a message that was not on the page before it; its text."""
    page.evaluate(f"document.querySelectorAll({MESSAGE!r}).forEach(e => e.dataset.seen = '1')")
    action()
    fresh = page.locator(", ".join(f"{part}:not([data-seen])" for part in MESSAGE.split(", "))).first
    fresh.wait_for(state="visible", timeout=600_000)
    return fresh.inner_text()


def _run_for_message(page) -> str:
    """Press the run button; the message the run ended with (success or error), visible."""
    return _new_message(page, lambda: page.click("#captinv_run"))


def _choose_source(page, label: str) -> None:
    page.locator("#captinv_source input").click()
    page.locator("#captinv_source ul li", has_text=label).first.click()


def _run_and_wait(page, tmp_path, screenshot: str) -> None:
    text = _run_for_message(page)
    assert page.locator("#captinv_info .captinv-error").count() == 0, text
    path = tmp_path / screenshot
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def _open_set_folder(page, name: str) -> None:
    """Filter Extra Networks' Textual Inversion page to a set's folder as a user does: its button
    in the Dirs view (A1111's and Forge's default), its entry in the Tree view (reForge's), where
    the folders above it are expanded first by their chevrons."""
    pane = page.locator("#txt2img_textual_inversion_pane")
    button = pane.locator("button", has_text=f"captinv/{name}")
    if button.count():
        button.first.click()
        return
    *above, folder = ("embeddings", "captinv", name)
    for label in above:
        entry = _tree_folder(pane, label)
        if entry.locator("xpath=following-sibling::ul[1]").get_attribute("hidden") is not None:
            entry.locator(".tree-list-item-action-chevron").click()
    _tree_folder(pane, folder).click()


def _tree_folder(pane, label: str):
    return pane.locator(
        ".tree-list-content-dir",
        has=pane.page.locator(".tree-list-item-label", has_text=re.compile(rf"^\s*{label}\s*$")),
    ).first


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
    assert (run_folder(server, "kitty") / "kitty-all.safetensors").is_file()


def test_train_a_perfusion_concept_in_the_tab_and_send_its_prompt(server, page, tmp_path):
    photo = tmp_path / "Tiger.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    page.get_by_label("Perfusion concept (K/V edit)").check()
    sync_api.expect(page.locator("#captinv_run")).to_have_text("Train Perfusion concept")
    sync_api.expect(page.locator("#captinv_inversion_options")).to_be_hidden()
    page.fill("#captinv_covariance_prompts input", "32")
    page.locator("#captinv_covariance_prompts input").press("Enter")
    _run_and_wait(page, tmp_path, "captinv-perfusion.png")

    page.locator("#captinv_chips button.captinv-chip").first.click()

    sync_api.expect(page.locator("#txt2img_prompt textarea")).to_have_value(
        "a tabby tiger <perfusion:tiger:0.7>"
    )
    assert (server.data / "models" / "perfusion" / "tiger.safetensors").is_file()


def test_a_missing_covariance_caption_file_is_one_message_in_the_tabs_words(server, page, tmp_path):
    photo = tmp_path / "Lion.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    page.get_by_label("Perfusion concept (K/V edit)").check()
    page.fill("#captinv_covariance_captions textarea", str(tmp_path / "nothere.txt"))  # no such file
    message = _run_for_message(page)
    missing = tmp_path / "nothere.txt"
    assert f"No caption file or folder at {missing} (Covariance captions)." in message, message
    assert not (server.data / "models" / "perfusion" / "lion.safetensors").exists()


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


def test_every_message_shows_run_after_run_in_one_page(server, page, tmp_path):
    """Success, a taken name and an empty caption, one after another in the same page: each
    message is visible and replaces the last (the first run's chips do not linger)."""
    photo = tmp_path / "Again.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    sync_api.expect(page.locator("#captinv_names_hint").last).to_contain_text("again-all")

    assert "Done in" in _run_for_message(page)
    combined = page.locator("#captinv_chips button.captinv-combined")
    padding, color, gradient, weight = combined.evaluate(
        "e => { const s = getComputedStyle(e); "
        "return [s.paddingLeft, s.backgroundColor, s.backgroundImage, s.fontWeight]; }"
    )
    assert float(padding.removesuffix("px")) > 0
    assert color not in ("rgba(0, 0, 0, 0)", "transparent") or gradient != "none"  # a fill, plain or gradient
    assert int(weight) >= 600, weight

    assert "already exists" in _run_for_message(page)
    assert page.locator("#captinv_chips button").count() == 0  # no stale result beside the error

    page.fill("#captinv_caption textarea", "cat " * 80)
    assert "at most 75" in _run_for_message(page)
    page.screenshot(path=str(tmp_path / "captinv-messages.png"), full_page=True)


def test_a_failed_caption_keeps_the_typed_text(server, page, tmp_path):
    photo = tmp_path / "Words.png"
    chelsea().save(photo)
    _open_the_tab(page, server)
    _drop(page, photo)
    page.fill("#captinv_caption textarea", "my own words")
    for source in ("My own text", "WebUI BLIP interrogator"):
        _choose_source(page, source)
        message = _new_message(page, lambda: page.click("#captinv_recaption"))
        assert "type the caption" in message, message
        sync_api.expect(page.locator("#captinv_caption textarea")).to_have_value("my own words")


def test_a_file_that_is_no_image_gets_a_message(server, page, tmp_path):
    not_a_photo = tmp_path / "notes.png"
    not_a_photo.write_text("not an image")
    _open_the_tab(page, server)
    message = _new_message(
        page, lambda: page.set_input_files("#captinv_images input[type=file]", [str(not_a_photo)])
    )
    assert "notes.png" in message and "image" in message, message


def test_new_cards_are_in_extra_networks_without_a_refresh(server, page, tmp_path):
    photo = tmp_path / "Fresh.png"
    chelsea().save(photo)
    _fill_the_tab(page, server, photo)
    _run_and_wait(page, tmp_path, "captinv-fresh.png")
    _tab(page, "txt2img").first.click()
    page.locator("#txt2img_extra_tabs button", has_text="Textual Inversion").first.click()
    card = page.locator('#txt2img_textual_inversion_cards_html .card[data-name="fresh-all"]')
    card.wait_for(timeout=60_000)
    # each run's set is a folder of its own, which Extra Networks offers as a filter
    _open_set_folder(page, "fresh")
    sync_api.expect(card).to_be_visible()
    assert "word" in page.locator('.card[data-name="fresh-w02-tabby"] .description').first.inner_text()
    page.screenshot(path=str(tmp_path / "captinv-cards.png"), full_page=True)


def test_refreshing_the_embedding_list_during_a_run_changes_nothing(server, page, tmp_path):
    """Extra Networks' Refresh reloads the embedding database from disk and is not behind the
    queue; a run must keep training its own vectors through it (the same losses as undisturbed).
    Clicked again and again while the run trains: one click lands inside a step's encoding only
    now and then."""
    steps = {"steps": 30, "seed": 9}
    status, plain = invert(server, "refresh-plain", **steps)
    assert status == 200, plain
    page.goto(server.url, timeout=120_000)
    page.locator("#txt2img_extra_tabs button", has_text="Textual Inversion").first.click()
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(answer=invert(server, "refresh-hit", **steps)))
    worker.start()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and server.call("/sdapi/v1/progress")[1]["state"]["job_no"] < 2:
        time.sleep(0.2)
    clicks = 0
    while worker.is_alive() and time.monotonic() < deadline + 600:
        page.click("#txt2img_textual_inversion_extra_refresh")
        clicks += 1
        page.wait_for_timeout(100)
    worker.join(timeout=600)
    print(f"Refresh clicked {clicks} times during the run")
    status, hit = outcome["answer"]
    assert status == 200, hit
    assert hit["losses"] == plain["losses"]


def test_continue_from_a_card_opens_the_set_in_the_tab(server, page, tmp_path):
    """The ↻ button on a captinv set's Extra Networks card opens the set in the tab (caption and
    options from its file, Continue from set), and a run from there is a second round of it (that
    its vectors start from the file: test_extension's API test)."""
    assert invert(server, "card-round", learning_rate=0.02, seed=5)[0] == 200
    page.goto(server.url, timeout=120_000)
    page.locator("#txt2img_extra_tabs button", has_text="Textual Inversion").first.click()
    page.click("#txt2img_textual_inversion_extra_refresh")
    card = page.locator('#txt2img_textual_inversion_cards_html .card[data-name="card-round-all"]')
    card.wait_for(timeout=60_000)
    card.hover()
    card.locator(".captinv-continue").click()
    sync_api.expect(page.locator("#captinv_continue_from textarea")).to_have_value("card-round-all")
    sync_api.expect(page.locator("#captinv_caption textarea")).to_have_value("a tabby cat")
    sync_api.expect(page.locator("#captinv_learning_rate input[type=number]")).to_have_value("0.02")
    sync_api.expect(page.locator("#captinv_seed input[type=number]")).to_have_value("5")
    sync_api.expect(page.locator("#captinv_continue_from textarea")).to_be_visible()  # Advanced opened
    page.screenshot(path=str(tmp_path / "captinv-continue.png"), full_page=True)
    print(f"screenshot: {tmp_path / 'captinv-continue.png'}")
    # a word card is one word of a set: no button
    assert page.locator('.card[data-name="card-round-w02-tabby"] .captinv-continue').count() == 0

    photo = tmp_path / "Round.png"
    chelsea().save(photo)
    _drop(page, photo)
    page.fill("#captinv_name textarea", "card-round-2")
    page.fill("#captinv_steps input[type=number]", "2")
    page.locator("#captinv_steps input[type=number]").press("Enter")
    page.fill("#captinv_resolution input", "64")
    page.locator("#captinv_resolution input").press("Enter")
    _run_and_wait(page, tmp_path, "captinv-continued.png")
    with safe_open(str(run_folder(server, "card-round-2") / "card-round-2-all.safetensors"), "pt") as handle:
        assert handle.metadata()["continued_from"] == "card-round-all.safetensors"
