"""`<perfusion:NAME[:β[:τ]]>` in a prompt: a concept's K/V edits for that generation only.

Registered the way the built-in Lora network registers `<lora:...>`. Before
each batch's conditioning the WebUI calls `activate` with this network's tags,
or with none when the prompt has none, and `deactivate` at the end. Every
`activate` first removes what the previous one installed, so a generation
that failed before its `deactivate` cannot leave edits behind, and a prompt
without the tag runs the stock UNet (a closed gate is not the identity, so
"off" must mean unwrapped). While active, the concept's name is registered as
a one-vector embedding, so the word in the prompt is the trained concept word.
Which UNet and which embedding registry are the host's business.
"""

from __future__ import annotations

import logging
from pathlib import Path

from modules import extra_networks

from captinv.errors import CaptinvError
from captinv.hosts.base import Host
from captinv.perfusion import editing
from captinv.perfusion.concept import PerfusionConcept
from captinv.perfusion.errors import ConceptFileError
from captinv.perfusion.tags import parse_knobs, resolve
from captinv.webui.perfusion_tag import TAG

log = logging.getLogger(__name__)


class PerfusionNetwork(extra_networks.ExtraNetwork):
    def __init__(self, host: Host) -> None:
        super().__init__(TAG)
        self.host = host
        self._registered: list[str] = []
        self._cache: dict[Path, tuple[int, PerfusionConcept]] = {}

    def load(self, name: str) -> PerfusionConcept:
        """The concept file `models/perfusion/<name>.safetensors`, named after its file (a renamed
        copy is its own concept: tag, card and concept word all use the file name), re-read when
        it changed on disk. A changed file also makes the WebUI encode prompts again: its cached
        conditioning holds the old concept word."""
        path = self.host.concept_path(name)
        if not path.is_file():
            raise ConceptFileError(f"No Perfusion concept '{name}' in {self.host.concepts_dir}.")
        mtime = path.stat().st_mtime_ns
        cached = self._cache.get(path)
        if cached is None or cached[0] != mtime:
            self._cache[path] = (mtime, PerfusionConcept.load(path, name=path.stem))
            if cached is not None:
                self.host.reset_conditioning_cache()
        return self._cache[path][1]

    def activate(self, p, params_list) -> None:
        self._clear()
        if not params_list:
            return
        try:
            unet = self.host.denoiser()
            if unet is None:
                raise CaptinvError("no model is loaded")
            concepts, betas, taus = [], [], []
            for params in params_list:
                knobs = parse_knobs([str(item) for item in params.positional])
                concept = self.load(knobs.name)
                beta, tau, lock = resolve(knobs, concept.beta, concept.tau, concept.lock)
                if lock == "global":
                    p.comment(
                        f"Perfusion '{concept.name}': global key locking is headless only "
                        "(python -m captinv generate); the WebUI locks keys locally."
                    )
                concepts.append(concept)
                betas.append(beta)
                taus.append(tau)
            editing.activate(unet, concepts, beta=betas, tau=taus)
        except CaptinvError as err:
            log.warning("captinv: Perfusion not applied: %s", err)
            p.comment(f"Perfusion not applied: {err}")
            return
        for concept in concepts:
            self.host.register_embedding(concept.name, concept.embedding)
            self._registered.append(concept.name)
        p.extra_generation_params["Perfusion"] = ", ".join(
            f"{concept.name}: β {beta:g} τ {tau:g}" for concept, beta, tau in zip(concepts, betas, taus)
        )

    def deactivate(self, p) -> None:
        self._clear()

    def _clear(self) -> None:
        unet = self.host.denoiser()
        if unet is not None:
            editing.remove(unet)
        for name in self._registered:
            self.host.unregister_embedding(name)
        self._registered.clear()
