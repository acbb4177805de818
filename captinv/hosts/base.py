"""The one seam between captinv's WebUI glue and the WebUI it runs in.

The tab, the API and the job code (`captinv/webui/`) never import a WebUI: they hold
a `Host` and ask it for everything that lives in the WebUI process: the loaded model
as a `ModelBackend` for a run, the embedding registry and the conditioning cache, the
UNet that generations run (for Perfusion's tag), progress, interrupt and the queue.
Each WebUI is one folder under `captinv/hosts/` with one `Host` implementation;
`captinv.hosts.detect` picks it once at start-up by feature detection. Adding a host
is adding a folder: nothing above this seam changes.

Nothing here imports a WebUI, so the job code can be read and tested without one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from PIL import Image
from torch import nn

from captinv.backends.base import ModelBackend, Vectors
from captinv.perfusion.errors import ConceptFileError
from captinv.trainer import Callbacks
from captinv.webui.settings import Setting


class Host(ABC):
    """What captinv needs from a WebUI. The methods are grouped as the glue uses them."""

    name: str = "WebUI"  # shown in messages: "AUTOMATIC1111", "Forge", "reForge"
    app: Any = None  # the WebUI's FastAPI app, once `app_started`

    # -- the model a run trains against ----------------------------------------------

    @abstractmethod
    def check_supported(self) -> None:
        """Raise `UnsupportedModelError` when no run can train against the loaded model.

        Called before any work (captioning included), so a refused run costs nothing."""

    @abstractmethod
    def training_backend(self, keep_networks: bool = False) -> AbstractContextManager[ModelBackend]:
        """The loaded model as a `ModelBackend`, prepared for a run while inside (the selected
        checkpoint's own weights, resident, nothing of the last generation left patched) and
        handed back to the WebUI as it was on exit, however the run ends. With `keep_networks`
        the LoRAs/hypernetworks the last generation left active stay applied."""

    # -- embeddings and the conditioning cache --------------------------------------

    @property
    @abstractmethod
    def embeddings_dir(self) -> Path:
        """Where the WebUI loads textual-inversion embeddings from."""

    @abstractmethod
    def register_embedding(self, name: str, vectors: Vectors) -> None:
        """Make `name` in a prompt mean these vectors, without a file, until unregistered."""

    @abstractmethod
    def unregister_embedding(self, name: str) -> None:
        """Undo `register_embedding`."""

    @abstractmethod
    def load_new_embeddings(self) -> None:
        """Files just written under `embeddings_dir` work in the very next prompt and appear in
        the WebUI's lists, without a restart or a refresh click."""

    @abstractmethod
    def reset_conditioning_cache(self) -> None:
        """Forget every cached prompt encoding, so an identical prompt is encoded again."""

    # -- Perfusion ------------------------------------------------------------------

    @property
    @abstractmethod
    def models_dir(self) -> Path:
        """The WebUI's models folder (Perfusion concepts live in `models/perfusion`)."""

    @abstractmethod
    def denoiser(self) -> nn.Module | None:
        """The UNet generations run now, whose cross-attention the `<perfusion:...>` tag edits;
        None when no model is loaded yet."""

    @property
    def concepts_dir(self) -> Path:
        return self.models_dir / "perfusion"

    @property
    def covariance_dir(self) -> Path:
        """Beside the concepts, not inside: Extra Networks shows every subfolder of a card
        page's folder as a filter button, and the cache holds no cards."""
        return self.models_dir / "perfusion-covariance"

    def concept_path(self, name: str) -> Path:
        """The concept a tag or a card names: `<name>.safetensors` in the concepts folder (matched
        case-insensitively, as the WebUI matches Lora names). The file name is the concept's
        identity, as for embeddings and Loras, so a renamed copy is a concept of its own; a name
        can never reach outside the folder."""
        folder = self.concepts_dir
        if not name.strip() or name.startswith(".") or any(sep in name for sep in ("/", "\\", "\0")):
            raise ConceptFileError(f"'{name}' is not a Perfusion concept name (a file name in {folder}).")
        path = folder / f"{name}.safetensors"
        if not path.is_file() and folder.is_dir():
            path = next((p for p in folder.glob("*.safetensors") if p.stem.lower() == name.lower()), path)
        return path

    # -- progress, interrupt, the queue ---------------------------------------------

    @abstractmethod
    def training_callbacks(self, total: int, after: int = 0) -> Callbacks:
        """Trainer callbacks that drive the WebUI's progress bar and obey its stop buttons; the bar
        counts `total` steps plus `after` jobs that follow them (a preview)."""

    @abstractmethod
    def set_status(self, text: str) -> None:
        """A line of text in the WebUI's progress display."""

    @abstractmethod
    def interrupted(self) -> bool:
        """True once the user pressed Interrupt during the current job."""

    @abstractmethod
    def interrupt(self) -> None:
        """Cancel the current job: it stops and writes nothing."""

    @abstractmethod
    def stop_and_save(self) -> None:
        """Stop the current job after its step and keep what it learned so far."""

    @abstractmethod
    def save_requested(self) -> bool:
        """True once the user pressed Stop & save during the current job."""

    @abstractmethod
    def run_queued(self, job: str, work: Callable[[], Any]) -> Any:
        """Run `work` under the WebUI's queue lock as job `job`, so it never runs beside a
        generation (for API routes; the tab uses `gpu_call`)."""

    @abstractmethod
    def gpu_call(self, fn: Callable[..., Any], extra_outputs: list[Any]) -> Callable[..., Any]:
        """`fn` as a gradio handler that holds the queue and reports progress by task id."""

    @abstractmethod
    def queued_call(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` as a gradio handler that holds the queue (no progress bar)."""

    # -- services the WebUI already has ---------------------------------------------

    @abstractmethod
    def option(self, key: str) -> Any:
        """A value from the WebUI's Settings."""

    @abstractmethod
    def render_preview(self, prompt: str, seed: int, resolution: int) -> Image.Image | None:
        """One txt2img image with the WebUI's own sampler; None if it fails (a failed preview
        must not lose a finished run)."""

    @abstractmethod
    def show_live_preview(self, image: Image.Image) -> None:
        """Show `image` where the WebUI shows a generation's live preview."""

    @abstractmethod
    def webui_caption(self, images: list[Image.Image]) -> str:
        """A caption of the first image from the WebUI's own BLIP interrogator."""

    @property
    @abstractmethod
    def caption_device(self) -> str:
        """Where captioning models run (the WebUI's interrogation device)."""

    @abstractmethod
    def api_settings(self) -> tuple[bool, dict[str, str]]:
        """(whether the API is on, its --api-auth users) for captinv's own routes."""

    # -- start-up -------------------------------------------------------------------

    @abstractmethod
    def add_settings(self, settings: list[Setting]) -> None:
        """Add captinv's options to the WebUI's Settings page."""

    @abstractmethod
    def register_extra_networks(self) -> None:
        """Register the `<perfusion:...>` tag and the Perfusion card page."""

    def app_started(self, app: Any) -> None:
        """The WebUI's web app is up, its own routes included: kept for hosts that reach some of
        the WebUI's state only through them."""
        self.app = app
