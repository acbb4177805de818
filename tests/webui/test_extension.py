"""captinv inside a real WebUI: loads cleanly, inverts over the API, the names work in txt2img."""

from __future__ import annotations

import base64
import html
import json
import threading
import time

from tests.webui.photo import chelsea_b64

SAMPLER = {"sampler_name": "Euler", "scheduler": "Automatic"}  # both named: the WebUI logs no correction


def _txt2img(server, prompt: str) -> bytes:
    status, body = server.call(
        "/sdapi/v1/txt2img",
        {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 11} | SAMPLER,
    )
    assert status == 200, body
    return base64.b64decode(body["images"][0])


def _invert(server, name: str, **options):
    body = {
        "image": chelsea_b64(),
        "caption": "a tabby cat",
        "name": name,
        "steps": 4,
        "resolution": 64,
    } | options
    return server.call("/captinv/v1/invert", body)


def test_extension_loads_without_errors_and_adds_the_tab(server):
    log = server.log.read_text()
    assert "Traceback" not in log and "Error loading script" not in log, log[-3000:]
    status, config = server.call("/config")
    assert status == 200
    assert "Invert from Caption" in str(config) and "captinv_run" in str(config)


def test_inverted_names_are_loaded_and_change_txt2img(server):
    combined_prompt, word_prompt = "a photo of chelsea-all", "a photo of chelsea-w02-tabby sitting"
    before = (_txt2img(server, combined_prompt), _txt2img(server, word_prompt))
    # the untrained vectors are the caption words' own token rows
    untrained = (_txt2img(server, "a photo of a tabby cat"), _txt2img(server, "a photo of tabby sitting"))

    status, result = _invert(server, "chelsea")

    assert status == 200, result
    assert result["names"] == ["chelsea-all", "chelsea-w01-a", "chelsea-w02-tabby", "chelsea-w03-cat"]
    loaded = server.call("/sdapi/v1/embeddings")[1]["loaded"]
    assert loaded["chelsea-all"]["vectors"] == 3 and loaded["chelsea-all"]["shape"] == server.width
    assert all(loaded[name]["vectors"] == 1 for name in result["word_names"])
    # the same prompt and seed, re-encoded with the new vectors (no restart, no refresh, no stale cache)
    assert _txt2img(server, combined_prompt) not in (before[0], untrained[0])
    assert _txt2img(server, word_prompt) not in (before[1], untrained[1])
    assert (server.data / "embeddings" / "chelsea-all.preview.png").is_file()


def test_taken_name_is_refused_and_files_stay(server):
    assert _invert(server, "twice")[0] == 200
    written = server.data / "embeddings" / "twice-all.safetensors"
    content = written.read_bytes()
    status, body = _invert(server, "twice")
    assert status == 409 and "already exists" in body["detail"]
    assert written.read_bytes() == content


def test_bad_input_gets_a_4xx_with_a_message(server):
    status, body = server.call("/captinv/v1/invert", {"image": "not base64!", "caption": "x"})
    assert status == 400 and "base64" in body["detail"]
    status, body = server.call(
        "/captinv/v1/invert", {"image": chelsea_b64(), "caption": "cat " * 80, "name": "long"}
    )
    assert status == 400 and "at most 75" in body["detail"]


def test_interrupt_stops_the_run_and_writes_nothing(server):
    outcome = {}
    worker = threading.Thread(target=lambda: outcome.update(answer=_invert(server, "stopped", steps=5000)))
    worker.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        progress = server.call("/sdapi/v1/progress")[1]
        if progress.get("state", {}).get("job_no", 0) >= 2:
            break
        time.sleep(0.5)
    server.call("/sdapi/v1/interrupt", {})
    worker.join(timeout=120)
    status, body = outcome["answer"]
    assert status == 409 and "nothing was written" in body["detail"]
    assert not list((server.data / "embeddings").glob("stopped-*"))


def _txt2img_info(server, prompt: str) -> tuple[bytes, str]:
    status, body = server.call(
        "/sdapi/v1/txt2img",
        {"prompt": prompt, "steps": 2, "width": 64, "height": 64, "seed": 11} | SAMPLER,
    )
    assert status == 200, body
    return base64.b64decode(body["images"][0]), body["info"]


def _perfusion(server, name: str, caption: str):
    body = {"image": chelsea_b64(), "caption": caption, "name": name, "steps": 3, "resolution": 64}
    return server.call("/captinv/v1/perfusion", body | {"covariance_prompts": 64})


def test_perfusion_concepts_apply_with_their_tag_and_only_then(server):
    prompt = "a photo of a tabby kitty and a puss"
    stock = _txt2img(server, prompt)

    status, kitty = _perfusion(server, "kitty", "a tabby cat")
    assert status == 200, kitty
    assert kitty["tag"] == "<perfusion:kitty:0.7>" and kitty["superclass"] == "cat"
    assert kitty["sentence"] == "a tabby kitty" and kitty["size_bytes"] > 0
    assert (server.data / "models" / "perfusion" / "kitty.safetensors").is_file()
    assert _perfusion(server, "puss", "a cat")[0] == 200
    assert _perfusion(server, "kitty", "a tabby cat")[0] == 409  # never overwritten unasked
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

    one, info = _txt2img_info(server, f"{prompt} {kitty['tag']}")
    assert one != stock
    assert json.loads(info)["extra_generation_params"]["Perfusion"] == "kitty: 0.7"
    assert 'Perfusion: "kitty: 0.7"' in json.loads(info)["infotexts"][0]
    stronger = _txt2img(server, f"{prompt} <perfusion:kitty:0.3>")
    both = _txt2img(server, f"{prompt} <perfusion:kitty:0.7> <perfusion:puss>")
    assert len({one, stronger, both}) == 3
    # without the tag: the stock UNet and no concept word, bit for bit
    assert _txt2img(server, prompt) == stock


def test_runs_and_generations_leave_the_log_clean(server):
    """After runs, previews and generations with and without the Perfusion tag (the tests above),
    the WebUI's log has no traceback and no warning of captinv's making."""
    log = server.log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "autocorrection" not in log and ":captinv." not in log, log[-3000:]  # captinv's loggers
