"""Training one Perfusion concept from an image, on any `ModelBackend`.

It reuses the textual-inversion trainer (cached latents, batched noise draws,
progress, interrupt, NaN guard): the concept word is the one trainable
pseudo-word of a plan built from the init text, with the superclass word
replaced by the concept's name and initialised from that word's rows.
`PerfusionTrainer` adds the per-layer V targets as a second parameter group,
derives i* from each step's own text encodings at the concept position, and
wraps the UNet's cross-attention K/V for the run only.

The concept position is found by probing, not by counting tokens: the text
encoder is causal, so the first encoding that changes when the concept's
vector changes is the concept's. That holds for every host's prompt syntax,
chunking and padding convention without re-implementing any of them.

A finished concept carries what it was trained with (the text path's
fingerprint, the covariance's id) and how selective its gate came out
(`selectivity`), measured on prompts it never saw.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from captinv import __version__, runs
from captinv.backends.base import Conditioning, ModelBackend
from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import CaptionError
from captinv.init_vectors import FUNCTION_WORDS, PseudoWord, WordPlan, split_words
from captinv.perfusion import editing
from captinv.perfusion.concept import ConceptSize, PerfusionConcept
from captinv.perfusion.corpus import read_captions
from captinv.perfusion.covariance import Covariance
from captinv.perfusion.errors import PerfusionError
from captinv.perfusion.layers import cross_attention_layers
from captinv.perfusion.rank1 import EMA_DECAY, ema_update, straight_through
from captinv.perfusion.selectivity import GateSelectivity, gate_selectivity
from captinv.perfusion.textpath import fingerprint
from captinv.perfusion.textpath import text_covariance as text_covariance  # the WebUI imports it here
from captinv.perfusion.trainable import TrainableConcept
from captinv.templates import templates_that_fit
from captinv.trainer import Callbacks, RunReport, Trainer, TrainResult, stop_metadata

logger = logging.getLogger(__name__)
_PHRASE_ENDS = frozenset(
    [
        "on",
        "in",
        "at",
        "with",
        "of",
        "under",
        "near",
        "next",
        "by",
        "from",
        "into",
        "onto",
        "over",
        "for",
        "to",
    ]
)


@dataclass(kw_only=True)
class PerfusionResult(RunReport):
    """`sentence` has the superclass word replaced by the concept's name."""

    name: str
    superclass: str
    path: Path
    size: ConceptSize
    selectivity: GateSelectivity

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "superclass": self.superclass,
            "file": self.path.name,
            "size_bytes": self.size.total,
            "gate_selectivity": self.selectivity.to_dict(),
        } | self._run_fields()


def default_superclass(text: str) -> str:
    """The head noun of the text's first phrase: "a tabby cat on a sofa" -> "cat".

    Without a parser this is a guess (the last content word before the first
    preposition or -ing verb), which is why the tab shows it for the user to correct.
    """
    subject: str | None = None
    for word in split_words(text):
        lowered = word.lower()
        if subject and (lowered in _PHRASE_ENDS or lowered.endswith("ing")):
            break
        if word.isalpha() and lowered not in FUNCTION_WORDS and lowered != "there":
            subject = lowered
    if subject is None:
        raise CaptionError(
            "The init text has no content word to take as the superclass; name one (e.g. 'cat')."
        )
    return subject


def superclass_token(token_ids: list[int]) -> int:
    """Which token of a (multi-token) superclass word stands for the word: its last. The encoder is
    causal, so the last token's encoding is the first to have seen the whole word: i_super (the
    locked keys) is taken there, and the concept word starts from that token's row, one rule for both."""
    return len(token_ids) - 1


def plan_concept(backend: ModelBackend, text: str, name: str, superclass: str) -> WordPlan:
    """The init text as fixed words, with the superclass word (its last mention) as the trained concept.

    A superclass absent from the text makes the sentence the concept alone.
    """
    tokens = backend.tokenize(superclass)
    if not tokens:
        raise CaptionError(f"The superclass {superclass!r} has no tokens; use a plain word such as 'cat'.")
    rows = backend.token_rows(tokens)
    last = superclass_token(tokens)
    concept = PseudoWord(
        index=1,
        text=superclass,
        token_ids=tokens,
        init={key: value[last : last + 1] for key, value in rows.items()},
        trainable=True,
        name=name,
    )
    words = split_words(text)
    lowered = [w.lower() for w in words]
    if superclass.lower() not in lowered:
        return WordPlan(text=superclass, base=name, words=[concept])
    at = len(lowered) - 1 - lowered[::-1].index(superclass.lower())
    plan = WordPlan(text=" ".join(words), base=name)
    for index, word in enumerate(words, start=1):
        if index - 1 == at:
            plan.words.append(dataclasses.replace(concept, index=index))
            continue
        ids = backend.tokenize(word)
        plan.words.append(PseudoWord(index, word, ids, backend.token_rows(ids), trainable=False))
    return plan


def _plain_sentence(plan: WordPlan) -> str:
    return " ".join(word.text for word in plan.words)


def probe_nudge(rows: torch.Tensor) -> torch.Tensor:
    """±1e-2 in alternating components: a direction of mean zero, which layer norms keep."""
    signs = torch.ones(rows.shape[-1], dtype=rows.dtype, device=rows.device)
    signs[1::2] = -1
    return 1e-2 * signs.expand_as(rows)


@torch.no_grad()
def concept_position(backend: ModelBackend, prompt: str, name: str, rows: dict[str, torch.Tensor]) -> int:
    """Index of the concept's encoding in `prompt`: the first one that moves when its vector moves.

    The nudge is small and of mean zero: the text encoders' layer norms subtract each row's mean,
    so a shift of every component by the same amount never reaches the output (A1111's SD2 path
    showed no change at all)."""
    moved = {key: value + probe_nudge(value) for key, value in rows.items()}
    first = backend.context(backend.conditioning([prompt], {name: rows}))[0].float()
    second = backend.context(backend.conditioning([prompt], {name: moved}))[0].float()
    if not (first.isfinite().all() and second.isfinite().all()):
        # NaN compares unequal to nothing, so the search below would blame the concept instead.
        raise PerfusionError(
            f"The text encoder gives NaN or infinite values for {prompt!r} with the concept '{name}' in it "
            "(a text encoder in half precision, or a broken checkpoint)."
        )
    changed = torch.nonzero((first - second).abs().amax(dim=-1) > 0).flatten()
    if changed.numel() == 0:
        raise PerfusionError(f"The concept '{name}' does not reach the text encoding of {prompt!r}.")
    return int(changed[0])


# Auto-stop must not end a run while i* (a slow moving average) still mostly remembers where it
# started, the superclass's encoding: the saved gate would then fire on every "cat". It may stop once
# the start weighs under a tenth: 230 steps at the paper's decay of 0.99.
_I_STAR_SETTLED = math.ceil(math.log(0.1) / math.log(EMA_DECAY))


class PerfusionTrainer(Trainer):
    """The inversion trainer plus the K/V edits: V targets learn, i* follows the concept's encodings."""

    stopping_rule = dataclasses.replace(Trainer.stopping_rule, min_steps=_I_STAR_SETTLED)

    def __init__(
        self,
        backend: ModelBackend,
        plan: WordPlan,
        latents: torch.Tensor,
        config: InvertConfig,
        options: PerfusionOptions,
        covariance_factor: torch.Tensor,
    ) -> None:
        if len(plan.trainable) != 1 or plan.trainable[0].vector_count != 1:
            raise PerfusionError("A Perfusion plan trains exactly one single-vector concept word.")
        concept = plan.trainable[0]
        self.concept_name = concept.name or ""
        self.options = options
        templates = templates_that_fit(config.templates, plan.vector_count, backend.count_tokens)
        sentence, plain = plan.sentence(), _plain_sentence(plan)
        rows = {key: value.to(backend.device) for key, value in concept.init.items()}
        self.positions = {
            t.format(sentence): concept_position(backend, t.format(sentence), self.concept_name, rows)
            for t in templates
        }
        self.i_super = self._superclass_encoding(backend, [t.format(plain) for t in templates], concept)
        self.edit = TrainableConcept(
            cross_attention_layers(backend.denoiser()), self.i_super, covariance_factor
        ).to(backend.device)
        self.i_star: torch.Tensor | None = None  # the running (EMA) target input
        self._good_i_star: torch.Tensor | None = None  # its value after the last good step
        super().__init__(backend, plan, latents, config)

    @torch.no_grad()
    def _superclass_encoding(
        self, backend: ModelBackend, prompts: list[str], concept: PseudoWord
    ) -> torch.Tensor:
        """i_super: the superclass word's encoding (at `superclass_token`), averaged over the templates."""
        context = backend.context(backend.conditioning(prompts, {})).float()
        offset = superclass_token(concept.token_ids)
        index = torch.tensor(
            [position + offset for position in self.positions.values()], device=context.device
        )
        return context[torch.arange(len(prompts), device=context.device), index].mean(0)

    def _keep_good(self) -> None:
        super()._keep_good()
        self._good_i_star = self.i_star

    def _restore_good(self) -> None:
        """The running i* goes back with the vectors: a NaN step's encodings already entered it."""
        super()._restore_good()
        self.i_star = self._good_i_star

    def _param_groups(self) -> list[dict]:
        values = {"params": list(self.edit.parameters()), "lr": self.options.value_learning_rate}
        return [*super()._param_groups(), values]

    @contextmanager
    def session(self) -> Iterator[None]:
        with super().session():
            unet = self.backend.denoiser()
            if editing.is_installed(unet):
                raise PerfusionError("Perfusion edits are already active on this UNet; remove them first.")
            editing.install(unet, self.edit)
            try:
                yield
            finally:
                editing.remove(unet)

    def _conditioning(self, prompts: list[str], *, training: bool) -> Conditioning:
        cond = super()._conditioning(prompts, training=training)
        context = self.backend.context(cond)
        index = torch.tensor([self.positions[p] for p in prompts], device=context.device)
        encodings = context[torch.arange(len(prompts), device=context.device), index].float().mean(0)
        if training:  # an evaluation (the stopping rule's) reads i* but never moves or starts it
            self.i_star = encodings.detach() if self.i_star is None else ema_update(self.i_star, encodings)
        running = encodings.detach() if self.i_star is None else self.i_star
        self.edit.set_input(straight_through(running, encodings))
        return cond

    def concept(self, embedding: dict[str, torch.Tensor], metadata: dict[str, str]) -> PerfusionConcept:
        if self.i_star is None:
            raise PerfusionError("No step has run; there is no concept to save.")
        metadata = metadata | fingerprint(self.backend).to_metadata()
        concept = self.edit.to_concept(
            self.concept_name, self.plan.trainable[0].text, embedding, self.i_star, metadata
        )
        return dataclasses.replace(
            concept, beta=self.options.beta, tau=self.options.tau, lock=self.options.lock
        )


def _metadata(
    plan: WordPlan, backend: ModelBackend, config: InvertConfig, result: TrainResult
) -> dict[str, str]:
    return {
        "captinv_version": __version__,
        "caption": plan.text,
        "sentence": plan.sentence(),
        **stop_metadata(result, config),
        "learning_rate": str(config.learning_rate),
        "seed": str(config.seed),
        "base_model": backend.model_name,
        "model_family": backend.family,
        "words": json.dumps([word.text for word in plan.words]),
    }


def check_concept_inputs(
    text: str, name: str, config: InvertConfig, options: PerfusionOptions, out_dir: Path
) -> str:
    """Everything about a Perfusion run that can be checked before a model loads: the superclass,
    the folder, the name, the user's covariance captions. Returns the superclass."""
    superclass = _superclass(text, options)
    runs.check_output(out_dir, [name], overwrite=config.overwrite)
    if options.covariance_captions:
        read_captions(options.covariance_captions)
    return superclass


def _superclass(text: str, options: PerfusionOptions) -> str:
    return (options.superclass or default_superclass(text)).lower()


class _Concept(runs.Recipe):
    """Perfusion: the concept word in the text's sentence, the K/V edits, one concept file."""

    def __init__(
        self,
        text: str,
        name: str,
        config: InvertConfig,
        options: PerfusionOptions,
        covariance: Covariance | Callable[[], Covariance],
    ) -> None:
        super().__init__(config)
        self.text, self.name, self.options = text, name, options
        self.superclass = _superclass(text, options)
        self.covariance = covariance
        self.concept: PerfusionConcept | None = None  # the trained concept, once `files` made it
        self.selectivity: GateSelectivity | None = None  # measured on the trained concept, in `files`

    def plan(self, backend: ModelBackend) -> WordPlan:
        return plan_concept(backend, self.text, self.name, self.superclass)

    def output_names(self, plan: WordPlan) -> list[str]:
        return [self.name]

    def trainer(self, backend: ModelBackend, plan: WordPlan, latents: torch.Tensor) -> PerfusionTrainer:
        if callable(self.covariance):  # estimated only now that every check has passed
            self.covariance = self.covariance()
        factor = self.covariance.factor()
        return PerfusionTrainer(backend, plan, latents, self.config, self.options, factor)

    def files(
        self, backend: ModelBackend, plan: WordPlan, trainer: Trainer, result: TrainResult
    ) -> dict[str, bytes]:
        if not isinstance(trainer, PerfusionTrainer) or callable(self.covariance):
            raise TypeError("files() takes the trainer that trainer() made")
        metadata = _metadata(plan, backend, self.config, result)
        metadata["covariance"] = self.covariance.source or self.covariance.corpus_id
        self.concept = trainer.concept(result.embeddings[self.name], metadata)
        self.selectivity = gate_selectivity(backend, self.concept)
        logger.info("%s: %s", self.name, self.selectivity)
        self.concept.metadata.update(self.selectivity.to_metadata())
        return {f"{self.name}.safetensors": self.concept.to_bytes()}


def train_concept(
    backend: ModelBackend,
    images: list[Image.Image],
    text: str,
    config: InvertConfig,
    options: PerfusionOptions,
    out_dir: Path,
    *,
    name: str,
    covariance: Covariance | Callable[[], Covariance],
    callbacks: Callbacks | None = None,
    extra_files: runs.ExtraFiles | None = None,
) -> PerfusionResult:
    """Train the concept `name` on `images` and write `out_dir/<name>.safetensors` (and `extra_files`,
    e.g. card files, in the same set).

    `covariance` may be a function that estimates it (e.g. `lambda: text_covariance(...)`): it
    then runs only after the name, the folder and the plan were checked, so a refused run
    costs no estimate and writes no cache.
    """
    recipe = _Concept(text, name, config, options, covariance)
    done = runs.run(backend, images, recipe, out_dir, callbacks=callbacks, extra_files=extra_files)
    assert recipe.concept is not None  # made by recipe.files() before the set was written
    return PerfusionResult.of_training(
        done.result,
        done.started,
        config.steps,
        name=name,
        superclass=recipe.superclass,
        path=done.paths[0],
        size=recipe.concept.size(),
        text=done.plan.text,
        sentence=done.plan.sentence(),
        selectivity=recipe.selectivity,
    )
