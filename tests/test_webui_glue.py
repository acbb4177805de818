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
    assert controls == expected | {f.name for f in dataclasses.fields(PerfusionOptions)}
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
        "captinv_image",
        "captinv_caption",
        "captinv_run",
        "captinv_interrupt",
        "captinv_preview",
    } <= elem_ids


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
    assert "<b>" not in html and "&lt;b&gt;" in html


def test_loss_svg_scales_points_into_the_box():
    svg = layout.loss_svg([2.0, 1.0, 0.0], width=100, height=50)
    assert 'points="0.0,0.0 50.0,25.0 100.0,50.0"' in svg and "2.0000 → 0.0000 over 3 steps" in svg
    assert layout.loss_svg([1.0]) == ""


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
    assert request_fields["init"]["type"] == "string" and request_fields["lr_schedule"]["type"] == "string"
    assert request_fields["steps"]["type"] == "integer" and "captioner" not in request_fields
    perfusion_fields = document["components"]["schemas"]["PerfusionRequest"]["properties"]
    assert perfusion_fields["superclass"]["type"] == "string" and perfusion_fields["beta"]["type"] == "number"
    assert {"steps", "seed"} <= set(perfusion_fields)
    request = schema.PerfusionRequest(image="x", steps=5, superclass="cat", tau=0.2)
    assert schema.config_values(request) == {"steps": 5}
    assert schema.config_values(request, PerfusionOptions) == {"superclass": "cat", "tau": 0.2}
    request = schema.InvertRequest(image="x", init="classify", lr_schedule="cosine")
    assert schema.config_values(request) == {"init": "classify", "lr_schedule": "cosine"}


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
