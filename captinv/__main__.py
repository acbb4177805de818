"""Command line: `python -m captinv caption|invert|perfusion|generate|inspect ...`.

Flags of `invert` and `perfusion` are generated from `InvertConfig` and
`PerfusionOptions`, so the CLI, the tab and the API cannot drift apart. A `CaptinvError` is printed as one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from contextlib import contextmanager
from pathlib import Path

from captinv.config import PERFUSION_DEFAULTS, InvertConfig, PerfusionOptions
from captinv.errors import CaptinvError

log = logging.getLogger("captinv")


def _flag_kwargs(spec: dataclasses.Field, options: type = InvertConfig, default=dataclasses.MISSING) -> dict:
    hint = typing.get_type_hints(options)[spec.name]
    default = spec.default if default is dataclasses.MISSING else default
    kwargs: dict = {"help": f"{spec.metadata['help']} (default: {default})", "default": default}
    if spec.metadata.get("choices"):
        kwargs["choices"] = spec.metadata["choices"]
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    kwargs["type"] = base if base in (int, float) else str
    return kwargs


_MODEL_HELP = "Diffusers folder, hub id, .safetensors checkpoint, or 'miniworld'."
# Caption-inversion options with no meaning for a single concept word.
_NOT_FOR_PERFUSION = ("vectors_per_word", "train_function_words")


def _model_flags(parser: argparse.ArgumentParser, default_out: str) -> None:
    parser.add_argument("--model", required=True, help=_MODEL_HELP)
    parser.add_argument(
        "--out", type=Path, default=Path(default_out), help=f"Output folder (default: ./{default_out})."
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    parser.add_argument(
        "--sample", action="store_true", help="Also render <name>.preview.png with the result."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captinv", description="Turn a photo into reusable prompt words.")
    parser.add_argument("-v", "--verbose", action="store_true", help="Log what happens.")
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="Print the caption (or label) an image would start from.")
    caption.add_argument("image")
    for name in ("init", "captioner", "classifier", "caption_beams", "caption_max_tokens"):
        spec = next(f for f in dataclasses.fields(InvertConfig) if f.name == name)
        caption.add_argument(f"--{name.replace('_', '-')}", dest=name, **_flag_kwargs(spec))

    invert = commands.add_parser("invert", help="Train pseudo-words from image(s) and write embedding files.")
    invert.add_argument("images", nargs="+", help="One photo (main mode) or a few of the same subject.")
    _model_flags(invert, default_out="embeddings")
    for spec in dataclasses.fields(InvertConfig):
        invert.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, **_flag_kwargs(spec))

    perfusion = commands.add_parser(
        "perfusion", help="Train a Perfusion concept (key-locked K/V edits) from one photo."
    )
    perfusion.add_argument("images", nargs="+", help="One photo (or a few) of the concept.")
    _model_flags(perfusion, default_out="perfusion")
    perfusion.add_argument(
        "--covariance-cache",
        type=Path,
        default=Path("perfusion") / "covariance",
        help="Folder of cached text-encoding covariances (default: ./perfusion/covariance).",
    )
    for options in (InvertConfig, PerfusionOptions):
        for spec in dataclasses.fields(options):
            if options is InvertConfig and spec.name in _NOT_FOR_PERFUSION:
                continue
            flag = f"--{spec.name.replace('_', '-')}"
            default = PERFUSION_DEFAULTS.get(spec.name, spec.default)
            perfusion.add_argument(flag, dest=spec.name, **_flag_kwargs(spec, options, default))

    generate = commands.add_parser("generate", help="Render a prompt with embeddings and Perfusion concepts.")
    generate.add_argument("prompt")
    generate.add_argument("--model", required=True, help=_MODEL_HELP)
    generate.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."
    )
    generate.add_argument("--embedding", type=Path, action="append", default=[], help="An embedding file.")
    generate.add_argument(
        "--concept",
        action="append",
        default=[],
        metavar="FILE[:BETA[:TAU]][:local|global]",
        help="A Perfusion concept file, optionally with its gate bias β (lower: stronger), temperature τ "
        "and key locking, as in the WebUI's <perfusion:...> tag.",
    )
    generate.add_argument("--steps", type=int, default=20)
    generate.add_argument("--guidance", type=float, default=7.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", type=Path, default=Path("captinv.png"), help="PNG to write.")

    inspect = commands.add_parser(
        "inspect", help="Show names, shapes, norms and metadata of embedding files."
    )
    inspect.add_argument("files", nargs="+", type=Path)
    return parser


def _config(args: argparse.Namespace, options: type = InvertConfig):
    known = {f.name for f in dataclasses.fields(options)}
    return options(**{k: v for k, v in vars(args).items() if k in known})


def _caption(args: argparse.Namespace) -> None:
    from captinv.captioning import init_source
    from captinv.images import load_images

    print(init_source(_config(args), first_image=args.image).describe(load_images([args.image])))


def _progress_bar(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", dynamic_ncols=True)

    def update(progress) -> None:
        bar.update(progress.step - bar.n)
        bar.set_postfix(loss=f"{progress.loss:.4f}")
        if progress.step == total:
            bar.close()

    return update


def _invert(args: argparse.Namespace) -> None:
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.captioning import init_source
    from captinv.images import load_images
    from captinv.inversion import default_base, invert
    from captinv.trainer import Callbacks

    config = _config(args)
    images = load_images(args.images)
    backend = DiffusersBackend.load(args.model, device=args.device)
    text = init_source(config, str(backend.device), args.images[0]).describe(images)
    print(f"init text: {text}", file=sys.stderr)
    result = invert(
        backend,
        images,
        text,
        config,
        args.out,
        base=default_base(config, args.images[0]),
        callbacks=Callbacks(progress=_progress_bar(config.steps)),
    )
    for path in result.files:
        print(path)
    print(f"prompt with: {result.combined_name}   or word by word: {result.sentence}", file=sys.stderr)
    if args.sample:
        from captinv.embedding_io import read_embedding

        embeddings = {path.stem: read_embedding(path).vectors for path in result.files}
        preview = args.out / f"{result.combined_name}.preview.png"
        backend.generate(f"a photo of {result.combined_name}", embeddings, seed=config.seed).save(preview)
        print(preview)


def _perfusion(args: argparse.Namespace) -> None:
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.captioning import init_source
    from captinv.images import load_images
    from captinv.inversion import default_base
    from captinv.perfusion import editing
    from captinv.perfusion.concept import PerfusionConcept
    from captinv.perfusion.covariance import CovarianceCache
    from captinv.perfusion.training import text_covariance, train_concept
    from captinv.trainer import Callbacks

    config, options = _config(args), _config(args, PerfusionOptions)
    images = load_images(args.images)
    backend = DiffusersBackend.load(args.model, device=args.device)
    text = init_source(config, str(backend.device), args.images[0]).describe(images)
    print(f"init text: {text}", file=sys.stderr)
    with _covariance_bar() as progress:
        covariance = text_covariance(
            backend, options, CovarianceCache(args.covariance_cache), progress=progress
        )
    result = train_concept(
        backend,
        images,
        text,
        config,
        options,
        args.out,
        name=default_base(config, args.images[0]),
        covariance=covariance,
        callbacks=Callbacks(progress=_progress_bar(config.steps)),
    )
    print(result.path)
    print(
        f"{result.name} ({result.superclass}): {result.size}; prompt with: {result.sentence}", file=sys.stderr
    )
    print(result.selectivity, file=sys.stderr)
    if args.sample:
        concept = PerfusionConcept.load(result.path)
        preview = args.out / f"{result.name}.preview.png"
        with editing.applied(backend.denoiser(), concept):
            image = backend.generate(
                f"a photo of {result.sentence}", {concept.name: concept.embedding}, seed=config.seed
            )
        image.save(preview)
        print(preview)


@contextmanager
def _covariance_bar():
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


def _generate(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.embedding_io import read_embedding
    from captinv.perfusion import editing
    from captinv.perfusion.concept import PerfusionConcept
    from captinv.perfusion.tags import resolve
    from captinv.perfusion.textpath import text_path_warning

    concepts, gates = [], []
    for item in args.concept:
        path, knobs = _concept_arg(item)
        concepts.append(PerfusionConcept.load(path))
        gates.append(resolve(knobs, concepts[-1].beta, concepts[-1].tau, concepts[-1].lock))
    embeddings = {path.stem: read_embedding(path).vectors for path in args.embedding}
    embeddings |= {concept.name: concept.embedding for concept in concepts}
    backend = DiffusersBackend.load(args.model, device=args.device)
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
            args.prompt, embeddings, steps=args.steps, guidance=args.guidance, seed=args.seed
        )
    if source is not None and not source.globally_locked_rows:
        log.warning("Global key locking found no prompt to lock; the keys stayed locally locked.")
    image.save(args.out)
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


def _inspect(args: argparse.Namespace) -> None:
    from captinv.embedding_io import read_embedding

    for path in args.files:
        item = read_embedding(path)
        print(f"{item.name}: {item.vector_count} vector(s)")
        for key, value in item.vectors.items():
            norms = ", ".join(f"{n:.3f}" for n in value.norm(dim=1).tolist())
            print(f"  {key}: {list(value.shape)}  norms [{norms}]")
        for key, value in sorted(item.metadata.items()):
            print(f"  {key} = {value}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s"
    )
    try:
        {
            "caption": _caption,
            "invert": _invert,
            "perfusion": _perfusion,
            "generate": _generate,
            "inspect": _inspect,
        }[args.command](args)
    except CaptinvError as err:
        print(f"captinv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captinv: interrupted; nothing was written.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
