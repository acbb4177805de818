"""captinv inside a real WebUI: loads cleanly, inverts over the API, the names work in txt2img."""

from __future__ import annotations

import html
import json
import threading
import time

from safetensors import safe_open

from tests.webui.calls import UNMOVED, invert, perfusion, run_folder, txt2img, txt2img_info
from tests.webui.photo import chelsea_b64


def test_extension_loads_without_errors_and_adds_the_tab(server):
    log = server.log.read_text()
    assert "Traceback" not in log and "Error loading script" not in log, log[-3000:]
    status, config = server.call("/config")
    assert status == 200
    assert "Invert from Caption" in str(config) and "captinv_run" in str(config)


def test_inverted_names_are_loaded_and_change_txt2img(server):
    combined_prompt, word_prompt = "a photo of chelsea-all", "a photo of chelsea-w02-tabby sitting"
    before = (txt2img(server, combined_prompt), txt2img(server, word_prompt))
    # Untrained, each name is exactly the rows of its caption words: the same images as the words.
    untrained = (txt2img(server, "a photo of a tabby cat"), txt2img(server, "a photo of tabby sitting"))
    status, still = invert(server, "still", learning_rate=UNMOVED)
    assert status == 200, still
    assert txt2img(server, "a photo of still-all") == untrained[0]

    status, result = invert(server, "chelsea")

    assert status == 200, result
    assert result["names"] == ["chelsea-all", "chelsea-w01-a", "chelsea-w02-tabby", "chelsea-w03-cat"]
    loaded = server.call("/sdapi/v1/embeddings")[1]["loaded"]
    assert loaded["chelsea-all"]["vectors"] == 3 and loaded["chelsea-all"]["shape"] == server.width
    assert all(loaded[name]["vectors"] == 1 for name in result["word_names"])
    # the same prompt and seed, re-encoded with the new vectors (no restart, no refresh, no stale cache),
    # differs from no embedding and from what the untrained vectors give
    trained = (txt2img(server, combined_prompt), txt2img(server, word_prompt))
    assert trained[0] not in (before[0], untrained[0])
    assert trained[1] not in (before[1], untrained[1])
    assert (run_folder(server, "chelsea") / "chelsea-all.preview.png").is_file()


def test_taken_name_is_refused_and_files_stay(server):
    assert invert(server, "twice")[0] == 200
    written = run_folder(server, "twice") / "twice-all.safetensors"
    content = written.read_bytes()
    status, body = invert(server, "twice")
    assert status == 409 and "already exists" in body["detail"]
    assert written.read_bytes() == content


def test_bad_input_gets_a_4xx_with_a_message(server):
    status, body = server.call("/captinv/v1/invert", {"image": "not base64!", "caption": "x"})
    assert status == 400 and "base64" in body["detail"]
    status, body = server.call(
        "/captinv/v1/invert", {"image": chelsea_b64(), "caption": "cat " * 80, "name": "long"}
    )
    assert status == 400 and "at most 75" in body["detail"]


def _stopped_run(server, name: str, endpoint: str) -> tuple[int, dict]:
    """A 5000-step run (no auto-stop), stopped through `endpoint` once it has trained two steps.

    The WebUI's progress keeps the last job's state until the next job begins, so the run's own
    job is told apart by its start time: a stop sent on the last run's step count would reach the
    WebUI before this run begins, and be cleared by its start."""
    outcome = {}
    before = server.call("/sdapi/v1/progress")[1].get("state", {}).get("job_timestamp")
    run = lambda: outcome.update(answer=invert(server, name, steps=5000, auto_stop=False))  # noqa: E731
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 600  # SDXL on a CPU spends minutes before its first step
    while time.monotonic() < deadline:
        state = server.call("/sdapi/v1/progress")[1].get("state", {})
        if state.get("job_timestamp") != before and state.get("job_no", 0) >= 2:
            break
        time.sleep(0.5)
    server.call(endpoint, {})
    worker.join(timeout=300)
    return outcome["answer"]


def test_interrupt_cancels_the_run_and_writes_nothing(server):
    status, body = _stopped_run(server, "cancelled", "/sdapi/v1/interrupt")
    assert status == 409 and "nothing was written" in body["detail"]
    assert not list((server.data / "embeddings").rglob("cancelled-*"))


def test_skip_stops_the_run_and_saves_a_complete_set(server):
    """The tab's Stop & save is the WebUI's Skip: the vectors reached so far, every file of the set."""
    status, body = _stopped_run(server, "kept", "/sdapi/v1/skip")
    assert status == 200, body
    assert body["stop_reason"] == "stopped" and 2 <= body["steps"] < body["max_steps"] == 5000
    folder = run_folder(server, "kept")
    assert sorted(body["files"]) == sorted(path.name for path in folder.glob("*.safetensors"))
    with safe_open(str(folder / "kept-all.safetensors"), "pt") as handle:
        assert handle.metadata()["steps"] == str(body["steps"])
    assert txt2img(server, "a photo of kept-all") != txt2img(server, "a photo of a tabby cat")


def test_three_photos_train_one_classic_word(server):
    """Classic textual inversion: one `*` word from a few photos of the subject, sent as `images`."""
    photos = [chelsea_b64(), chelsea_b64(flip=True), chelsea_b64(crop=True)]
    status, body = invert(server, "three", images=photos, image=None, caption="*", steps=3)
    assert status == 200, body
    assert len(body["word_names"]) == 1 and body["sentence"] == body["word_names"][0], body
    assert txt2img(server, f"a photo of {body['combined_name']}") != txt2img(server, "a photo of")


def test_an_empty_name_twice_gives_two_sets_named_after_the_file(server):
    first = invert(server, "", filename="Garden Cat.png")
    second = invert(server, "", filename="Garden Cat.png")
    assert first[0] == second[0] == 200, (first, second)
    assert (first[1]["combined_name"], second[1]["combined_name"]) == ("garden-cat-all", "garden-cat-2-all")
    assert run_folder(server, "garden-cat").is_dir() and run_folder(server, "garden-cat-2").is_dir()


def _vectors(path) -> dict:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def test_continue_from_this_embedding_starts_from_the_stored_vectors(server):
    """A second round of a set (the card's "continue from this embedding"): the tab reads the set's
    caption and options back, and training starts from the stored vectors, not from the caption's
    token rows: a step too small to move them leaves exactly the first round's vectors."""
    assert invert(server, "round-one", learning_rate=0.05)[0] == 200
    status, stored = server.call("/captinv/v1/set?name=round-one-all")
    assert (
        status == 200 and stored["caption"] == "a tabby cat" and stored["options"]["learning_rate"] == "0.05"
    )
    status, body = invert(
        server, "round-two", caption=None, continue_from="round-one-all", learning_rate=UNMOVED
    )
    assert status == 200, body
    assert body["caption"] == "a tabby cat"
    first, second = run_folder(server, "round-one"), run_folder(server, "round-two")
    for old, new in zip(sorted(first.glob("*.safetensors")), sorted(second.glob("*.safetensors"))):
        assert new.name == old.name.replace("round-one", "round-two")
        assert _vectors(new).keys() == _vectors(old).keys()
        for key, value in _vectors(old).items():
            assert (_vectors(new)[key] - value).abs().max() < 1e-6, new.name
    untrained = invert(server, "round-zero", learning_rate=UNMOVED)[0] == 200
    assert untrained
    zero = _vectors(run_folder(server, "round-zero") / "round-zero-all.safetensors")
    one = _vectors(first / "round-one-all.safetensors")
    assert any((zero[key] - one[key]).abs().max() > 1e-4 for key in one)  # the first round did train
    with safe_open(str(second / "round-two-all.safetensors"), "pt") as handle:
        assert handle.metadata()["continued_from"] == "round-one-all.safetensors"
    assert server.call("/captinv/v1/set?name=nothing-all")[0] == 404


def test_perfusion_concepts_apply_with_their_tag_and_only_then(server):
    prompt = "a photo of a tabby kitty and a puss"
    stock = txt2img(server, prompt)

    status, kitty = perfusion(server, "kitty", "a tabby cat")
    assert status == 200, kitty
    assert kitty["tag"] == "<perfusion:kitty:0.7>" and kitty["superclass"] == "cat"
    assert kitty["sentence"] == "a tabby kitty" and kitty["size_bytes"] > 0
    assert (server.data / "models" / "perfusion" / "kitty.safetensors").is_file()
    assert perfusion(server, "puss", "a cat")[0] == 200
    assert perfusion(server, "kitty", "a tabby cat")[0] == 409  # never overwritten unasked
    # its Extra Networks card adds the tag and the concept word, like a Lora card its activation text
    folder = server.data / "models" / "perfusion"
    assert (folder / "kitty.preview.png").is_file() and (folder / "kitty.description.txt").is_file()
    # no subfolder, which the card page would show as a filter button; the covariance is cached beside it
    assert [p.name for p in folder.iterdir() if p.is_dir()] == []
    assert list((server.data / "models" / "perfusion-covariance").glob("*.safetensors"))
    status, card = server.call("/sd_extra_networks/get-single-card?page=perfusion&tabname=txt2img&name=kitty")
    assert status == 200, card
    assert "cardClicked('txt2img', \"<perfusion:kitty:0.7> kitty\"" in html.unescape(card["html"]), card
    assert "kitty.preview.png" in card["html"], card

    one, info = txt2img_info(server, f"{prompt} {kitty['tag']}")
    assert one != stock
    assert json.loads(info)["extra_generation_params"]["Perfusion"] == "kitty: β 0.7 τ 0.15"
    assert 'Perfusion: "kitty: β 0.7 τ 0.15"' in json.loads(info)["infotexts"][0]
    stronger = txt2img(server, f"{prompt} <perfusion:kitty:0.3>")
    both = txt2img(server, f"{prompt} <perfusion:kitty:0.7> <perfusion:puss>")
    assert len({one, stronger, both}) == 3
    # without the tag: the stock UNet and no concept word, bit for bit
    assert txt2img(server, prompt) == stock


def test_progress_shows_step_loss_and_live_previews(server):
    """/sdapi/v1/progress reports the step and loss; with live previews on, the words learned so far
    appear as the WebUI's live preview during the run."""
    assert server.call("/sdapi/v1/options", {"captinv_live_preview_every": 2})[0] == 200
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.update(answer=invert(server, "live", steps=8)))
    worker.start()
    seen_text, seen_image = "", None
    deadline = time.monotonic() + 300
    while worker.is_alive() and time.monotonic() < deadline:
        progress = server.call("/sdapi/v1/progress")[1]
        if "loss" in (progress.get("textinfo") or ""):
            seen_text = progress["textinfo"]
        seen_image = progress.get("current_image") or seen_image
        time.sleep(0.2)
    worker.join(timeout=600)
    server.call("/sdapi/v1/options", {"captinv_live_preview_every": 0})
    assert outcome["answer"][0] == 200, outcome["answer"]
    assert "step" in seen_text and "loss" in seen_text, seen_text
    assert seen_image, "no live preview was shown"


def test_runs_and_generations_leave_the_log_clean(server):
    """After runs, previews and generations with and without the Perfusion tag (the tests above),
    the WebUI's log has no traceback and no warning of captinv's making."""
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "autocorrection" not in log and ":captinv." not in log, log[-3000:]  # captinv's loggers
