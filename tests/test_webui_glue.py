"""The WebUI layer's parts that need no WebUI: the tab layout (plain gradio 3.41, as the
WebUI pins), the API schema and auth, and install.py's requirement logic."""

import base64
import dataclasses
import io

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import ImageError
from captinv.webui import layout, requirements, schema
from captinv.webui.auth import basic_auth, parse_credentials


def test_tab_layout_offers_every_option_with_config_defaults():
    blocks, tab = layout.build_tab({"steps": 150})
    controls = set(tab.options)
    expected = {f.name for f in dataclasses.fields(InvertConfig)} - set(layout.NOT_CONTROLS)
    assert controls == expected | set(layout.PERFUSION_FIELDS) | {"keep_active_networks", "continue_from"}
    assert tab.options["superclass"].value == "" and tab.options["beta"].value == PerfusionOptions().beta
    assert tab.mode.value == next(iter(layout.MODES)) and set(layout.MODES.values()) == {
        "invert",
        "perfusion",
    }
    assert tab.options["steps"].value == 150
    assert tab.options["learning_rate"].value == InvertConfig().learning_rate
    assert [c[0] for c in tab.options["templates"].choices] == ["object", "style", "none"]  # (label, value)
    assert tab.options["train_function_words"].value is True
    config = blocks.get_config_file()
    elem_ids = {c["props"].get("elem_id") for c in config["components"]}
    assert {
        "captinv_images",
        "captinv_caption",
        "captinv_run",
        "captinv_stop",
        "captinv_cancel",
        "captinv_preview",
    } <= elem_ids


def test_each_mode_shows_and_sends_only_its_own_options():
    invert_controls, perfusion_controls, run = layout.mode_updates("Perfusion concept (K/V edit)")
    assert invert_controls["visible"] is False and perfusion_controls["visible"] is True
    assert run["value"] == "Train Perfusion concept"
    assert layout.mode_updates("Caption inversion (embeddings)")[2]["value"] == "Invert"
    values = {"steps": 5, "vectors_per_word": 2, "train_function_words": False, "beta": 0.6}
    values |= {"superclass": "cat", "keep_active_networks": True, "continue_from": "cat-all"}
    webui = {"keep_active_networks": True}
    assert layout.mode_options("invert", values) == layout.RunOptions(
        {"steps": 5, "vectors_per_word": 2, "train_function_words": False},
        {},
        webui | {"continue_from": "cat-all"},
    )
    assert layout.mode_options("perfusion", values) == layout.RunOptions(
        {"steps": 5}, {"beta": 0.6, "superclass": "cat"}, webui
    )


def test_the_tab_shows_the_names_a_run_will_write_before_it_starts(tmp_path):
    from captinv.webui.tab import names_hint, photo_paths

    photo = tmp_path / "grace_hopper.png"
    assert "grace-hopper-all" in names_hint("", [str(photo)])
    assert "evil-all" in names_hint("../evil", None)
    assert "no letters or digits" in names_hint("???", None) and "error" in names_hint("???", None)
    assert names_hint("", None) == ""

    class Gradio3File:  # what gradio 3 hands a handler for an uploaded file
        name = str(photo)

    assert photo_paths([Gradio3File(), str(photo)]) == [str(photo), str(photo)]


def test_tab_values_become_config_values():
    names = ["steps", "vectors_per_word", "resolution", "max_grad_norm", "seed", "flip"]
    values = layout.config_values(names, (50, 0, 0, 0.5, 0, False))
    assert values == {
        "steps": 50,
        "max_grad_norm": 0.5,
        "seed": 0,
        "flip": False,
    }  # 0 = automatic only if optional
    config = InvertConfig.from_mapping(values)
    assert config.vectors_per_word is None and config.resolution is None


def test_chips_call_the_javascript_helper_and_escape_text():
    html = layout.chips_html("cat-all", ["cat-w01-a"], "cat-w01-a <b>")
    assert "captinv.sendToPrompt('cat-all')" in html and "captinv.sendToPrompt('cat-w01-a')" in html
    assert "captinv.sendToTxt2img('cat-all')" in html
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_loss_svg_scales_points_into_the_box():
    svg = layout.loss_svg([2.0, 1.0, 0.0], width=100, height=50)
    assert 'points="0.0,0.0 50.0,25.0 100.0,50.0"' in svg and "2.0000 → 0.0000 over 3 steps" in svg
    assert layout.loss_svg([1.0]) == ""
    assert "over 2 steps" in layout.loss_svg([1.0, float("nan"), 0.5])  # rolled-back steps are skipped


def _png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_invert_request_validates_and_keeps_only_given_options():
    request = schema.InvertRequest(image=_png_b64(), caption="a red square", steps=50, seed=3)
    assert schema.config_values(request) == {"steps": 50, "seed": 3}
    assert InvertConfig.from_mapping(schema.config_values(request)).steps == 50
    with pytest.raises(Exception, match="steps"):
        schema.InvertRequest(image="x", steps="many")
    fields = schema.InvertRequest.__fields__ if hasattr(schema.InvertRequest, "__fields__") else {}
    assert "captioner" not in fields and "classifier" not in fields  # no server paths from a request


def _type(field: dict) -> str:
    """A field's JSON type: pydantic 1 writes it directly, pydantic 2 as anyOf [type, null]."""
    if "type" in field:
        return field["type"]
    return next(option["type"] for option in field["anyOf"] if option.get("type") != "null")


def test_the_routes_models_make_an_openapi_document():
    """The WebUI serves /docs and /openapi.json for every route, ours included."""
    app = FastAPI()

    @app.post("/invert", response_model=schema.InvertResponse)
    def invert(request: schema.InvertRequest):  # pragma: no cover - never called
        return None

    @app.post("/perfusion", response_model=schema.PerfusionResponse)
    def perfusion(request: schema.PerfusionRequest):  # pragma: no cover - never called
        return None

    @app.post("/caption", response_model=schema.CaptionResponse)
    def caption(request: schema.CaptionRequest):  # pragma: no cover - never called
        return None

    document = app.openapi()
    request_fields = document["components"]["schemas"]["InvertRequest"]["properties"]
    assert _type(request_fields["lr_schedule"]) == "string" and _type(request_fields["steps"]) == "integer"
    assert "captioner" not in request_fields and "images" in request_fields
    perfusion_request = document["components"]["schemas"]["PerfusionRequest"]["properties"]
    assert "covariance_captions" not in perfusion_request  # a path on the server: never from a request
    # every option documents its default (before: only its help)
    assert request_fields["learning_rate"]["description"].endswith("Default: 0.005.")
    assert request_fields["max_grad_norm"]["description"].endswith("Default: 1.0.")
    assert request_fields["vectors_per_word"]["description"].endswith("Default: one per token.")
    assert "Perfusion option" in request_fields["beta"]["description"]
    perfusion_fields = document["components"]["schemas"]["PerfusionRequest"]["properties"]
    assert _type(perfusion_fields["superclass"]) == "string" and _type(perfusion_fields["beta"]) == "number"
    assert {"steps", "seed"} <= set(perfusion_fields)
    request = schema.PerfusionRequest(image="x", steps=5, superclass="cat", tau=0.2)
    assert schema.config_values(request) == {"steps": 5}
    assert schema.config_values(request, PerfusionOptions) == {"superclass": "cat", "tau": 0.2}
    request = schema.InvertRequest(image="x", lr_schedule="cosine")
    assert schema.config_values(request) == {"lr_schedule": "cosine"}


def test_decode_image_accepts_data_urls_and_refuses_garbage():
    raw = schema.decode_image("data:image/png;base64," + _png_b64())
    assert Image.open(io.BytesIO(raw)).size == (64, 64)
    with pytest.raises(ImageError, match="not valid base64"):
        schema.decode_image("%%%not base64")
    with pytest.raises(ImageError, match="No image"):
        schema.decode_image("")


def test_api_auth_matches_the_webui_rules():
    assert parse_credentials("alice:s3cr:et,bob:pw") == {"alice": "s3cr:et", "bob": "pw"}
    app = FastAPI()

    @app.post("/x", dependencies=[Depends(basic_auth({"bob": "pw"}))])
    def route():
        return {"ok": True}

    client = TestClient(app)
    assert client.post("/x", auth=("bob", "pw")).status_code == 200
    assert client.post("/x", auth=("bob", "nope")).status_code == 401
    assert client.post("/x").status_code == 401


def test_install_adds_only_missing_requirements(tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        '[project]\nname = "x"\ndependencies = [\n    "torch>=2.1",\n    "newpkg[extra]>=1",\n]\n'
    )
    wanted = requirements.runtime_requirements(pyproject)
    assert wanted == ["torch>=2.1", "newpkg[extra]>=1"]
    assert requirements.missing(wanted, lambda name: name == "torch") == ["newpkg[extra]>=1"]
    pins = requirements.pin_installed(tmp_path / "c.txt").read_text().splitlines()
    import gradio

    assert f"gradio=={gradio.__version__}" in pins  # every installed package is frozen at its version


def test_the_project_runtime_requirements_are_what_install_py_reads():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    names = [
        requirements.requirement_name(r) for r in requirements.runtime_requirements(root / "pyproject.toml")
    ]
    assert names == ["torch", "transformers", "safetensors", "pillow", "numpy"]


def test_the_tab_wires_its_events_in_this_gradio(tmp_path):
    """Events, the JavaScript start hook and the mode switch as gradio builds them (CI runs this
    file with gradio 3.41, as A1111 and reForge pin, and with Forge's gradio 4)."""
    from captinv.hosts.base import Host
    from captinv.webui.tab import wire

    class Wiring(Host):
        """Only what `wire` calls at build time; a run would need a real WebUI."""

        def gpu_call(self, fn, extra_outputs):
            return fn

        def queued_call(self, fn):
            return fn

        def interrupt(self):
            raise AssertionError("not clicked here")

        stop_and_save = interrupt

    for method in Host.__abstractmethods__ - set(vars(Wiring)):
        setattr(Wiring, method, Wiring.interrupt)
    Wiring.__abstractmethods__ = frozenset()
    blocks, tab = layout.build_tab()
    with blocks:
        wire(tab, Wiring())
    config = blocks.get_config_file() if hasattr(blocks, "get_config_file") else blocks.config
    run = next(d for d in config["dependencies"] if "captinv.start" in (d.get("js") or ""))
    ids = {c["id"]: c["props"].get("elem_id") for c in config["components"]}
    assert [ids[i] for i in run["outputs"]] == [
        "captinv_chips",
        "captinv_preview",
        "captinv_loss",
        "captinv_info",
    ]
    assert "captinv_images" in [ids[i] for i in run["inputs"]]
    # the script keeps exactly the inputs (gradio also hands it the outputs; gradio 4 refuses extras)
    assert f"captinv.start({len(run['inputs'])}, values)" in run["js"]
