"""What every WebUI of the AUTOMATIC1111 family does alike.

A1111, Forge and reForge share `modules.shared` (state, options, command line),
`modules.call_queue`, `modules.processing` and the Extra Networks machinery; they
differ in how the model, its text encoders and its embedding database are built.
`WebUIHost` implements the shared part of `Host` once; each host's folder adds the
model side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modules import call_queue, devices, paths, processing, scripts, sd_samplers, shared
from PIL import Image

from captinv.errors import CaptionError
from captinv.hosts.base import Host
from captinv.trainer import Callbacks, Progress
from captinv.webui.auth import parse_credentials
from captinv.webui.settings import SECTION, Setting

log = logging.getLogger(__name__)


class WebUIHost(Host):
    # -- folders ------------------------------------------------------------------

    @property
    def embeddings_dir(self) -> Path:
        return Path(shared.cmd_opts.embeddings_dir)

    @property
    def models_dir(self) -> Path:
        return Path(paths.models_path)

    # -- progress, interrupt, the queue ---------------------------------------------

    def training_callbacks(self, total: int, after: int = 0) -> Callbacks:
        shared.state.job_count = total + after
        shared.state.job = "captinv"

        def progress(update: Progress) -> None:
            shared.state.job_no = update.step
            shared.state.textinfo = f"captinv: step {update.step}/{update.total}, loss {update.loss:.4f}"

        return Callbacks(
            progress=progress,
            should_stop=lambda: self.interrupted() or self.save_requested(),
            save_on_stop=self.save_requested,
        )

    def set_status(self, text: str) -> None:
        shared.state.textinfo = text

    def interrupted(self) -> bool:
        return bool(shared.state.interrupted)

    def interrupt(self) -> None:
        shared.state.interrupt()

    def stop_and_save(self) -> None:
        """The WebUI's Skip (what `/sdapi/v1/skip` sets): for a generation it keeps the images
        made so far, for a run the vectors learned so far."""
        shared.state.skip()

    def save_requested(self) -> bool:
        return bool(shared.state.skipped) and not self.interrupted()

    def run_queued(self, job: str, work: Callable[[], Any]) -> Any:
        with call_queue.queue_lock:
            shared.state.begin(job=job)
            try:
                return work()
            finally:
                shared.state.end()

    def gpu_call(self, fn: Callable[..., Any], extra_outputs: list[Any]) -> Callable[..., Any]:
        return call_queue.wrap_gradio_gpu_call(fn, extra_outputs=extra_outputs)

    def queued_call(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return call_queue.wrap_queued_call(fn)

    # -- conditioning cache ---------------------------------------------------------

    def reset_conditioning_cache(self) -> None:
        """Every cache `get_conds_with_caching` consults, hires fix's included."""
        for owner, names in (
            (processing.StableDiffusionProcessing, ("cached_c", "cached_uc")),
            (processing.StableDiffusionProcessingTxt2Img, ("cached_hr_c", "cached_hr_uc")),
        ):
            for name in names:
                if hasattr(owner, name):  # A1111 keeps [params, cond], Forge [params, cond, infotext]
                    setattr(owner, name, [None] * len(getattr(owner, name)))

    # -- services -------------------------------------------------------------------

    def option(self, key: str) -> Any:
        return getattr(shared.opts, key)

    def render_preview(self, prompt: str, seed: int, resolution: int) -> Image.Image | None:
        # the WebUI's default sampler named explicitly: left empty, it logs an "autocorrection"
        sampler, scheduler = sd_samplers.get_sampler_and_scheduler(None, None, convert_automatic=False)
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model,
            prompt=prompt,
            sampler_name=sampler,
            scheduler=scheduler,
            steps=self.option("captinv_preview_steps"),
            width=resolution,
            height=resolution,
            seed=seed,
            cfg_scale=7.0,
            do_not_save_samples=True,
            do_not_save_grid=True,
        )
        p.do_not_reload_embeddings = True  # what the run registered is what the preview shows
        # No always-on scripts, but a runner: reForge's process_images reads `p.scripts` unguarded.
        p.scripts = scripts.ScriptRunner()
        try:
            return processing.process_images(p).images[0]
        except Exception:  # a failed preview must not lose a finished run
            log.exception("captinv: preview failed")
            return None
        finally:
            p.close()

    def show_live_preview(self, image: Image.Image) -> None:
        shared.state.assign_current_image(image)

    def webui_caption(self, images: list[Image.Image]) -> str:
        """The WebUI's own BLIP (models/BLIP), without its CLIP ranking and without touching
        `shared.state`. Its weights are downloaded on first use, which fails offline with an
        IndexError deep in the WebUI; say what to do instead."""
        problem = self.webui_caption_problem()
        if problem:
            raise CaptionError(problem)
        interrogator = shared.interrogator
        try:
            if interrogator.blip_model is None:
                interrogator.blip_model = interrogator.load_blip_model()
            model = interrogator.blip_model.to(devices.device_interrogate)
            interrogator.dtype = next(model.parameters()).dtype
            caption = interrogator.generate_caption(images[0])
        except Exception as err:  # the interrogator's loading raises whatever its parts raise
            log.exception("captinv: the WebUI's BLIP failed")
            raise CaptionError(
                f"The WebUI's BLIP interrogator failed ({type(err).__name__}: {err}); type the caption."
            ) from err
        finally:
            interrogator.send_blip_to_ram()
            devices.torch_gc()
        if not caption.strip():
            raise CaptionError("The WebUI's BLIP returned an empty caption; type the caption instead.")
        return caption.strip()

    def webui_caption_problem(self) -> str | None:
        """Why the WebUI's BLIP cannot run here, found without loading it; None when it can."""
        folder = self.models_dir / "BLIP"
        if shared.interrogator.blip_model is None and not list(folder.glob("*.pth")):
            return (
                f"The WebUI's BLIP interrogator has no weights in {folder} and would download them, "
                "which needs the internet: type the caption (or put model_base_caption_capfilt_large.pth there)."
            )
        return None

    @property
    def caption_device(self) -> str:
        return str(devices.device_interrogate)

    def api_settings(self) -> tuple[bool, dict[str, str]]:
        options = shared.cmd_opts
        return bool(options.api or options.nowebui), parse_credentials(options.api_auth)

    # -- start-up -------------------------------------------------------------------

    def add_settings(self, settings: list[Setting]) -> None:
        """captinv's section in Settings, in the WebUI's own idiom."""
        import gradio as gr

        components = {"slider": gr.Slider, "number": gr.Number, None: None}
        for setting in settings:
            component = components[setting.component]
            info = shared.OptionInfo(setting.default, setting.label, component, setting.component_args)
            if setting.needs_reload:
                info = info.needs_reload_ui()
            info.section = SECTION
            shared.opts.add_option(setting.key, info)

    def register_extra_networks(self) -> None:
        """The `<perfusion:...>` tag and its card page (the UI modules are ready by `on_before_ui`)."""
        from modules import extra_networks, ui_extra_networks

        from captinv.hosts.perfusion_network import PerfusionNetwork
        from captinv.hosts.perfusion_page import PerfusionPage

        network = PerfusionNetwork(self)
        extra_networks.register_extra_network(network)
        ui_extra_networks.register_page(PerfusionPage(network))
