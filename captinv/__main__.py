"""Command line: `python -m captinv caption|invert|perfusion|generate|inspect ...`.

Flags of `invert` and `perfusion` are generated from `InvertConfig` and
`PerfusionOptions`, so the CLI, the tab and the API cannot drift apart.

Every user error is one line on stderr and exit code 2, argparse's own
included, and every command checks what it can before it loads a model: the
options, the images, the output folder and names, the device, where the model
is. Ctrl-C prints what exists afterwards. Anything else is a bug: its
traceback is printed with a line that says so (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import sys
import traceback
import typing
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captinv.config import INVERSION_ONLY, PERFUSION_DEFAULTS, GenerateOptions, InvertConfig, PerfusionOptions
from captinv.errors import CaptinvError, ConfigError, OutputError, cli_flag

if typing.TYPE_CHECKING:
    from captinv.trainer import Callbacks

log = logging.getLogger("captinv")

_MODEL_HELP = "Diffusers folder, hub id, .safetensors checkpoint, or 'miniworld'."
_DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: cuda if available)."
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Library messages that are noise for a CLI user (kept with -v); real warnings still show.
_NOISE = re.compile(
    "|".join(
        (
            r"`accelerate` was not found",
            r"`torch_dtype` is deprecated",
            r"modules that should be kept in float32",
            r"disabled the safety checker",
            r"Failed to load image Python extension",
            r"torchvision",
            r"Using a slow image processor",
        )
    )
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error (still exit 2)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"captinv: error: {message} (see: {self.prog} --help)\n")


def _value_parser(base: type, optional: bool) -> Callable[[str], Any]:
    """`base(text)`, or None for "none" when the option is optional (e.g. --max-grad-norm none)."""

    def parse(text: str) -> Any:
        return None if optional and text.strip().lower() == "none" else base(text)

    parse.__name__ = base.__name__  # argparse names it in "invalid float value: 'x'"
    return parse


def _add_option(
    parser: argparse.ArgumentParser, spec: dataclasses.Field, options: type, **change: Any
) -> None:
    """The flag of one option field: its help (with its default, once), type and choices."""
    hint = typing.get_type_hints(options)[spec.name]
    args = typing.get_args(hint)
    base = next((t for t in args if t is not type(None)), hint)
    text = change.pop("help", spec.metadata["help"]).replace("%", "%%")
    if "default" not in text and change.get("default", spec.default) is not None:
        text += " (default: %(default)s)"
    kwargs: dict[str, Any] = {"default": change.pop("default", spec.default), "dest": spec.name}
    choices = change.pop("choices", spec.metadata.get("choices"))
    if choices:
        kwargs["choices"] = choices
    flag = cli_flag(spec.name)
    if base is bool or spec.metadata.get(
        "negatable"
    ):  # a negatable choice: --x on, --no-x off, absent: default
        kwargs.pop("choices", None)
        action = parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    else:
        is_number = base in (int, float)
        kind = base if is_number else str
        action = parser.add_argument(
            flag, type=_value_parser(kind, is_number and type(None) in args), **kwargs
        )
    action.help = text  # set after construction: Python 3.10's BooleanOptionalAction appends the default too


# Caption-inversion options whose help says something else for a Perfusion concept.
_PERFUSION_HELP = {
    "text": "Init text: the sentence the concept word is trained in, with the superclass word replaced by the "
    "concept's name; with caption/classify it replaces the generated text.",
    "name": "Name of the concept: its file, its tag and the word prompts use (default: the first image's "
    "file name).",
    "steps": "Optimisation steps; with auto-stop the most it may take. A concept needs a few hundred: its "
    "running i* forgets the superclass slowly.",
}


def _add_options(
    parser: argparse.ArgumentParser,
    options: type,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    helps: dict[str, str] | None = None,
) -> None:
    """A flag per option field, with `defaults` and `helps` replacing the fields' own (Perfusion's)."""
    for spec in dataclasses.fields(options):
        if spec.name not in skip:
            change = {"default": defaults[spec.name]} if defaults and spec.name in defaults else {}
            change |= {"help": helps[spec.name]} if helps and spec.name in helps else {}
            _add_option(parser, spec, options, **change)


def _loading_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help=_MODEL_HELP)
    parser.add_argument("--device", default=None, help=_DEVICE_HELP)
    parser.add_argument(
        "--prediction-type",
        choices=("eps", "v"),
        default=None,
        help="What the model predicts, when the detection is wrong (default: from its config; for a single "
        "file as the WebUI decides: a yaml beside it, a v_pred key, else the UNet's response).",
    )
    parser.add_argument(
        "--model-config",
        default=None,
        help="Diffusers folder or hub id whose configs build a single-file checkpoint (default: diffusers' "
        "choice for the detected family, fetched from the Hub).",
    )


def _run_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
    _loading_flags(parser)
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help="Output folder (default: ./%(default)s)."
    )
    parser.add_argument(
        "--sample", action="store_true", help="Also render <name>.preview.png with the result."
    )


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="captinv", description="Turn a photo into reusable prompt words.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what happens.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    caption = commands.add_parser("caption", help="Print the caption (or label) an image would start from.")
    caption.add_argument("image")
    fields = {spec.name: spec for spec in dataclasses.fields(InvertConfig)}
    _add_option(
        caption,
        fields["init"],
        InvertConfig,
        choices=("caption", "classify"),
        help="BLIP caption (or the image's .txt caption file), or an image classifier's label.",
    )
    for name in ("captioner", "classifier", "caption_beams", "caption_max_tokens"):
        _add_option(caption, fields[name], InvertConfig)

    invert = commands.add_parser("invert", help="Train pseudo-words from image(s) and write embedding files.")
    invert.add_argument("images", nargs="+", help="One photo (main mode) or a few of the same subject.")
    _run_flags(invert, default_out="embeddings")
    _add_options(invert, InvertConfig)

    perfusion = commands.add_parser(
        "perfusion", help="Train a Perfusion concept (key-locked K/V edits) from one photo."
    )
    perfusion.add_argument("images", nargs="+", help="One photo (or a few) of the concept.")
    _run_flags(perfusion, default_out="perfusion")
    perfusion.add_argument(
        "--covariance-cache",
        type=Path,
        default=Path("perfusion") / "covariance",
        help="Folder of cached text-encoding covariances (default: ./%(default)s).",
    )
    _add_options(
        perfusion, InvertConfig, skip=INVERSION_ONLY, defaults=PERFUSION_DEFAULTS, helps=_PERFUSION_HELP
    )
    _add_options(perfusion, PerfusionOptions)

    generate = commands.add_parser("generate", help="Render a prompt with embeddings and Perfusion concepts.")
    generate.add_argument("prompt")
    _loading_flags(generate)
    generate.add_argument("--embedding", type=Path, action="append", default=[], help="An embedding file.")
    generate.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="FILE[:BETA[:TAU]][:local|global]",
        help="A Perfusion concept file, optionally with its gate bias β (lower: stronger), temperature τ "
        "and key locking, as in the WebUI's <perfusion:...> tag.",
    )
    _add_options(generate, GenerateOptions)
    generate.add_argument(
        "--out", type=Path, default=Path("captinv.png"), help="Image to write (default: %(default)s)."
    )

    inspect = commands.add_parser(
        "inspect", help="Show names, shapes, norms and metadata of embedding and Perfusion concept files."
    )
    inspect.add_argument("files", nargs="+", type=Path)
    return parser


@dataclasses.dataclass
class _Written:
    """Files this command has written so far: what an interrupt message must mention."""

    paths: list[Path] = dataclasses.field(default_factory=list)


def _options(args: argparse.Namespace, options: type = InvertConfig):
    known = {f.name for f in dataclasses.fields(options)}
    return options(**{k: v for k, v in vars(args).items() if k in known})


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _NOISE.search(record.getMessage())


def _quiet_libraries(args: argparse.Namespace) -> None:
    """Before a model loads: no loading bars, no warnings that are noise for a user (unless -v)."""
    if args.verbose:
        return
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    # The libraries' own root handlers, and ours. transformers also hands its records to the root
    # logger when the environment variable CI is set, which printed each of its warnings twice.
    loggers = [library.get_logger() for library in (diffusers_logging, transformers_logging)]
    for logger in loggers:
        logger.propagate = False
    for handler in [handler for logger in (*loggers, logging.getLogger()) for handler in logger.handlers]:
        handler.addFilter(_DropNoise())
    warnings.filterwarnings("ignore", message=_NOISE.pattern)


def _load_backend(args: argparse.Namespace, device, mixed_precision: bool = True):
    from captinv.backends.diffusers_backend import DiffusersBackend

    _quiet_libraries(args)
    backend = DiffusersBackend.load(
        args.model,
        device=device,
        mixed_precision=mixed_precision,
        prediction=args.prediction_type,
        config=args.model_config,
    )
    return backend


def _init_text(args: argparse.Namespace, config: InvertConfig, images, device: Any, first_image: str) -> str:
    """The init text, from --text, the caption file or the captioner (run before the model loads)."""
    from captinv.captioning import PlainText, init_source

    source = init_source(config, str(device), first_image)
    if not isinstance(source, PlainText):
        _quiet_libraries(args)
    return source.describe(images)


@contextmanager
def _progress(total: int, backend, config: InvertConfig, text: str) -> Iterator[Callbacks]:
    """A bar that appears with the first step, so a run refused before training shows none, and is
    closed however (and whenever: auto-stop) the run ends; above it, the text the run starts from
    (unless the user typed it), what was loaded and whether the photos are flipped. Printed only
    then: the checks that need the model's tokenizer (names confused in prompts) come first, and a
    refused run says one line.

    Once training has begun, a first Ctrl-C stops after the current step and saves what was
    learned (the files say how many steps); a second one cancels and writes nothing. Before the
    first step there is nothing to keep, so Ctrl-C cancels at once.
    """
    import signal

    from tqdm import tqdm

    from captinv.latents import choose_flip
    from captinv.trainer import Callbacks

    bars: list[tqdm] = []
    stop = {"requested": False}

    def on_ctrl_c(signum, frame) -> None:
        if not bars or stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        bars[0].write(
            "captinv: stopping after this step to save what was learned (Ctrl-C again: cancel)",
            file=sys.stderr,
        )

    def update(progress) -> None:
        if not bars:
            if config.text is None:
                print(f"init text: {text}", file=sys.stderr)
            print(f"model: {backend.describe()}", file=sys.stderr)
            print(choose_flip(config.flip, text).describe(), file=sys.stderr)
            bars.append(tqdm(total=total, unit="step", dynamic_ncols=True))
        bar = bars[0]
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4f}")

    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield Callbacks(progress=update, should_stop=lambda: stop["requested"], save_on_stop=lambda: True)
    finally:
        signal.signal(signal.SIGINT, previous)
        for bar in bars:
            bar.close()


def _caption(args: argparse.Namespace, written: _Written) -> None:
    from captinv.images import load_images

    config = _options(args)
    images = load_images([args.image])
    print(_init_text(args, config, images, "cpu", args.image))


def _preview(args: argparse.Namespace, written: _Written, name: str, render: Callable[[], Any]) -> None:
    """`<name>.preview.png` beside the files just written; an interrupt here keeps those files."""
    import io

    from captinv import files

    buffer = io.BytesIO()
    render().save(buffer, format="PNG")
    path = files.write_file(args.out / f"{name}.preview.png", buffer.getvalue(), overwrite=True)
    written.paths.append(path)
    print(path.resolve())  # as the embeddings' paths are printed


def _invert(args: argparse.Namespace, written: _Written) -> None:
    from captinv.backends.diffusers_backend import device_for, locate_model
    from captinv.images import load_images
    from captinv.inversion import check_inputs, default_base, invert

    config = _options(args)
    images = load_images(args.images)
    base = default_base(config, args.images[0])
    device = device_for(args.device)
    locate_model(args.model)
    text = _init_text(args, config, images, device, args.images[0])
    check_inputs(text, base, config, args.out)
    backend = _load_backend(args, device, config.mixed_precision)
    with _progress(config.steps, backend, config, text) as callbacks:
        result = invert(backend, images, text, config, args.out, base=base, callbacks=callbacks)
    print(result.stop_summary(), file=sys.stderr)
    written.paths += result.files
    for path in result.files:
        print(path)
    print(f"prompt with: {result.combined_name}   or word by word: {result.sentence}", file=sys.stderr)
    if args.sample:
        from captinv.embedding_io import read_embedding

        # the combined embedding is all the prompt names; rendered at the size it was trained at, as the tab does
        combined = next(path for path in result.files if path.stem == result.combined_name)
        embeddings = {result.combined_name: read_embedding(combined).vectors}
        prompt = f"a photo of {result.combined_name}"
        _preview(
            args,
            written,
            result.combined_name,
            lambda: backend.generate(prompt, embeddings, seed=config.seed, resolution=config.resolution),
        )


def _perfusion(args: argparse.Namespace, written: _Written) -> None:
    from captinv import files
    from captinv.backends.diffusers_backend import device_for, locate_model
    from captinv.images import load_images
    from captinv.inversion import default_base
    from captinv.perfusion import editing
    from captinv.perfusion.concept import PerfusionConcept
    from captinv.perfusion.training import check_concept_inputs, train_concept

    config, options = _options(args), _options(args, PerfusionOptions)
    images = load_images(args.images)
    name = default_base(config, args.images[0])
    device = device_for(args.device)
    locate_model(args.model)
    files.check_folder(args.covariance_cache)
    text = _init_text(args, config, images, device, args.images[0])
    check_concept_inputs(text, name, config, options, args.out)
    backend = _load_backend(args, device, config.mixed_precision)
    with _progress(config.steps, backend, config, text) as callbacks:
        result = train_concept(
            backend,
            images,
            text,
            config,
            options,
            args.out,
            name=name,
            covariance=lambda: _estimate_covariance(backend, options, args.covariance_cache, written),
            callbacks=callbacks,
        )
    print(result.stop_summary(), file=sys.stderr)
    written.paths.append(result.path)
    print(result.path)
    print(
        f"{result.name} ({result.superclass}): {result.size}; prompt with: {result.sentence}", file=sys.stderr
    )
    print(result.selectivity, file=sys.stderr)
    if args.sample:
        concept = PerfusionConcept.load(result.path)

        def render():
            with editing.applied(backend.denoiser(), concept):
                prompt = f"a photo of {result.sentence}"
                return backend.generate(
                    prompt, {concept.name: concept.embedding}, seed=config.seed, resolution=config.resolution
                )

        _preview(args, written, result.name, render)


def _estimate_covariance(backend, options: PerfusionOptions, folder: Path, written: _Written):
    """The text-encoding covariance (cached per model and corpus), with a progress bar while estimated;
    a newly cached estimate is among the files an interrupt message names."""
    from captinv.perfusion.covariance import CovarianceCache
    from captinv.perfusion.training import text_covariance

    cache = CovarianceCache(folder)
    try:
        with _covariance_bar() as progress:
            return text_covariance(backend, options, cache, progress=progress)
    finally:
        written.paths += cache.saved


@contextmanager
def _covariance_bar() -> Iterator[Callable[[Any], None]]:
    """A progress bar for the covariance estimate; its total is the estimate's running forecast."""
    from tqdm import tqdm

    bar = tqdm(total=0, unit="prompt", desc="text-encoding covariance (once per model)", dynamic_ncols=True)

    def update(progress) -> None:
        bar.total = progress.expected
        bar.update(progress.prompts - bar.n)

    try:
        yield update
    finally:
        bar.close()


def _concept_arg(item: str):
    """`FILE[:BETA[:TAU]][:local|global]` (FILE may itself hold colons): the path and its knobs."""
    from captinv.perfusion.tags import parse_knobs

    parts = item.split(":")
    cut = next((k for k in range(1, len(parts)) if Path(":".join(parts[:k])).is_file()), len(parts))
    path = ":".join(parts[:cut])
    return Path(path), parse_knobs([path, *parts[cut:]], f"--concept {item}")


def _check_image_out(path: Path) -> None:
    from captinv import files

    if path.suffix.lower() not in _IMAGE_SUFFIXES:
        raise OutputError(f"--out {path}: give an image file name ending in {', '.join(_IMAGE_SUFFIXES)}.")
    if path.is_dir():
        raise OutputError(
            f"--out {path} is a folder; give an image file name such as {path / 'captinv.png'}."
        )
    files.check_folder(path.parent)


def _generate(args: argparse.Namespace, written: _Written) -> None:
    import io
    from contextlib import nullcontext

    from captinv import files
    from captinv.backends.diffusers_backend import device_for, locate_model
    from captinv.embedding_io import check_layout, read_embedding
    from captinv.perfusion import editing
    from captinv.perfusion.concept import PerfusionConcept
    from captinv.perfusion.tags import resolve
    from captinv.perfusion.textpath import text_path_warning

    options = _options(args, GenerateOptions)
    _check_image_out(args.out)
    concepts, gates = [], []
    for item in args.concept:
        path, knobs = _concept_arg(item)
        concepts.append(PerfusionConcept.load(path))
        gates.append(resolve(knobs, concepts[-1].beta, concepts[-1].tau, concepts[-1].lock))
    embeddings = {path.stem: read_embedding(path).vectors for path in args.embedding}
    given = [path.stem.lower() for path in args.embedding] + [concept.name.lower() for concept in concepts]
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise ConfigError(f"More than one embedding or concept is named {', '.join(twice)}; give each once.")
    embeddings |= {concept.name: concept.embedding for concept in concepts}
    device = device_for(args.device)
    locate_model(args.model)
    backend = _load_backend(args, device)
    widths = {enc.key: enc.width for enc in backend.encoders}
    for name, vectors in embeddings.items():
        check_layout(vectors, widths, name)
    for concept in concepts:
        warning = text_path_warning(concept.metadata, backend, concept.name)
        if warning:
            log.warning(warning)
    betas, taus = [beta for beta, _, _ in gates], [tau for _, tau, _ in gates]
    edits = editing.applied(backend.denoiser(), concepts, beta=betas, tau=taus) if concepts else nullcontext()
    with edits:
        locked = [c for c, (_, _, lock) in zip(concepts, gates) if lock == "global"]
        source = _lock_keys_globally(backend, args.prompt, embeddings, locked) if locked else None
        image = backend.generate(
            args.prompt, embeddings, steps=options.steps, guidance=options.guidance, seed=options.seed
        )
    if source is not None and not source.globally_locked_rows:
        log.warning("Global key locking found no prompt to lock; the keys stayed locally locked.")
    buffer = io.BytesIO()
    image.save(buffer, format=_image_format(args.out))
    written.paths.append(files.write_file(args.out, buffer.getvalue(), overwrite=True))
    print(args.out)


def _lock_keys_globally(backend, prompt: str, embeddings: dict, concepts: list):
    """Keys of `prompt` from its twin with the concepts' superclass words (the paper's global lock)."""
    import torch

    from captinv.perfusion import editing

    names = {concept.name.lower() for concept in concepts}
    plain = {name: vectors for name, vectors in embeddings.items() if name.lower() not in names}
    with torch.no_grad():
        context = backend.context(backend.conditioning([prompt], embeddings))
        twin = backend.context(backend.conditioning([editing.superclass_prompt(prompt, concepts)], plain))
    return editing.lock_keys(backend.denoiser(), [(context[0], twin[0])])


def _image_format(path: Path) -> str:
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower(), "PNG")


def _inspect(args: argparse.Namespace, written: _Written) -> None:
    from captinv import files
    from captinv.embedding_io import PERFUSION_FORMAT, read_embedding
    from captinv.perfusion.concept import PerfusionConcept

    for path in args.files:
        metadata = files.read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
        if metadata.get("format") == PERFUSION_FORMAT:
            concept = PerfusionConcept.load(path)
            print(f"{concept.name}: Perfusion concept, keys locked to '{concept.superclass}'")
            print(f"  gate: β {concept.beta:g}, τ {concept.tau:g}; {len(concept.v_targets)} layers")
            print(f"  size: {concept.size()}")
            vectors, metadata = concept.embedding, concept.metadata
        else:
            item = read_embedding(path)
            print(f"{item.name}: {item.vector_count} vector(s)")
            vectors, metadata = item.vectors, item.metadata
        for key, value in vectors.items():
            norms = ", ".join(f"{n:.3f}" for n in value.norm(dim=1).tolist())
            print(f"  {key}: {list(value.shape)}  norms [{norms}]")
        for key, value in sorted(metadata.items()):
            print(f"  {key} = {value}")


COMMANDS = {
    "caption": _caption,
    "invert": _invert,
    "perfusion": _perfusion,
    "generate": _generate,
    "inspect": _inspect,
}


def _namer(command: str) -> Callable[[str], str]:
    """How an error names an option: its flag; `caption` takes its text from a caption file."""
    if command == "caption":
        return lambda field: "a .txt caption file beside the image" if field == "text" else cli_flag(field)
    return cli_flag


def _interrupted(written: _Written) -> str:
    if not written.paths:
        return "captinv: interrupted; nothing was written."
    where = sorted({str(path.parent) for path in written.paths})
    return (
        f"captinv: interrupted; already written in {', '.join(where)}: "
        f"{', '.join(path.name for path in written.paths)} (nothing else)."
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    written = _Written()
    try:
        COMMANDS[args.command](args, written)
    except CaptinvError as err:
        print(f"captinv: error: {err.render(_namer(args.command))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(written), file=sys.stderr)
        return 130
    except MemoryError:
        print("captinv: error: out of memory; try --batch-size 1 --gradient-checkpointing.", file=sys.stderr)
        return 2
    except Exception as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            print(
                "captinv: error: out of GPU memory; try --batch-size 1 --gradient-checkpointing.",
                file=sys.stderr,
            )
            return 2
        traceback.print_exc()
        print(
            "captinv: internal error: this is a bug in captinv, not a problem with your input; please "
            "report it with the traceback above.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
