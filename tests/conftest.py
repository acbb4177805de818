"""Shared fixtures: tiny real-architecture backends and a real photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from captinv.backends.diffusers_backend import DiffusersBackend
from tests import factories


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def sd1(model_dir) -> DiffusersBackend:
    return DiffusersBackend(factories.sd_pipeline(model_dir), model_name="tiny-sd1")


@pytest.fixture(scope="session")
def sd2v(model_dir) -> DiffusersBackend:
    return DiffusersBackend(
        factories.sd_pipeline(model_dir, width=1024, prediction="v_prediction"), "tiny-sd2v"
    )


@pytest.fixture(scope="session")
def sdxl(model_dir) -> DiffusersBackend:
    return DiffusersBackend(factories.sdxl_pipeline(model_dir), model_name="tiny-sdxl")


@pytest.fixture(scope="session")
def sd1_inpaint(model_dir) -> DiffusersBackend:
    return DiffusersBackend(factories.sd_pipeline(model_dir, in_channels=9), model_name="tiny-sd1-inpainting")


@pytest.fixture(scope="session")
def chelsea() -> Image.Image:
    """A real photo (Chelsea the cat) from scikit-image."""
    from skimage import data

    return Image.fromarray(np.asarray(data.chelsea()))
