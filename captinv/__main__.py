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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from captinv.config import InvertConfig, PerfusionOptions
from captinv.errors import CaptinvError

if TYPE_CHECKING:
    from captinv.trainer import Callbacks

log = logging.getLogger("captinv")


def _flag_kwargs(spec: dataclasses.Field, options: type = InvertConfig) -> dict:
    hint = typing.get_type_hints(options)[spec.name]
    kwargs: dict = {"help": f"{spec.metadata['help']} (default: {spec.default})", "default": spec.default}
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
            perfusion.add_argument(flag, dest=spec.name, **_flag_kwargs(spec, options))

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
        metavar="FILE[:BETA]",
        help="A Perfusion concept file, optionally with its gate bias β (lower: stronger).",
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


@contextmanager
def _progress(total: int) -> Iterator[Callbacks]:
    """A progress bar for a run of at most `total` steps, closed however (and whenever) it ends."""
    from tqdm import tqdm

    from captinv.trainer import Callbacks

    with tqdm(total=total, unit="step", dynamic_ncols=True) as bar:

        def update(progress) -> None:
            bar.update(progress.step - bar.n)
            bar.set_postfix(loss=f"{progress.loss:.4f}")

        yield Callbacks(progress=update)


def _invert(args: argparse.Namespace) -> None:
    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.captioning import init_source
    from captinv.images import load_images
    from captinv.inversion import default_base, invert

    config = _config(args)
    images = load_images(args.images)
    backend = DiffusersBackend.load(args.model, device=args.device)
    text = init_source(config, str(backend.device), args.images[0]).describe(images)
    print(f"init text: {text}", file=sys.stderr)
    with _progress(config.steps) as callbacks:
        result = invert(
            backend,
            images,
            text,
            config,
            args.out,
            base=default_base(config, args.images[0]),
            callbacks=callbacks,
        )
    print(result.stop_summary(), file=sys.stderr)
    for path in result.files:
        print(path)
    print(f"prompt with: {result.combined_name}   or word by word: {result.sentence}", file=sys.stderr)
    if args.sample:
        from captinv.embedding_io import read_embedding

        # the combined embedding is all the prompt names; rendered at the size it was trained at, as the tab does
        combined = next(path for path in result.files if path.stem == result.combined_name)
        embeddings = {result.combined_name: read_embedding(combined).vectors}
        preview = args.out / f"{result.combined_name}.preview.png"
        image = backend.generate(
            f"a photo of {result.combined_name}", embeddings, seed=config.seed, resolution=config.resolution
        )
        image.save(preview)
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

    config, options = _config(args), _config(args, PerfusionOptions)
    images = load_images(args.images)
    backend = DiffusersBackend.load(args.model, device=args.device)
    text = init_source(config, str(backend.device), args.images[0]).describe(images)
    print(f"init text: {text}", file=sys.stderr)
    covariance = text_covariance(backend, options, CovarianceCache(args.covariance_cache))
    with _progress(config.steps) as callbacks:
        result = train_concept(
            backend,
            images,
            text,
            config,
            options,
            args.out,
            name=default_base(config, args.images[0]),
            covariance=covariance,
            callbacks=callbacks,
        )
    print(result.stop_summary(), file=sys.stderr)
    print(result.path)
    print(
        f"{result.name} ({result.superclass}): {result.size}; prompt with: {result.sentence}", file=sys.stderr
    )
    if args.sample:
        concept = PerfusionConcept.load(result.path)
        preview = args.out / f"{result.name}.preview.png"
        with editing.applied(backend.denoiser(), concept):
            image = backend.generate(
                f"a photo of {result.sentence}",
                {concept.name: concept.embedding},
                seed=config.seed,
                resolution=config.resolution,
            )
        image.save(preview)
        print(preview)


def _concept_arg(item: str) -> tuple[Path, float | None]:
    """`FILE` or `FILE:BETA`."""
    path, separator, beta = item.rpartition(":")
    try:
        return (Path(path), float(beta)) if separator else (Path(item), None)
    except ValueError:
        return Path(item), None


def _generate(args: argparse.Namespace) -> None:
    from contextlib import nullcontext

    from captinv.backends.diffusers_backend import DiffusersBackend
    from captinv.embedding_io import read_embedding
    from captinv.perfusion import editing
    from captinv.perfusion.concept import PerfusionConcept

    concepts, betas = [], []
    for item in args.concept:
        path, beta = _concept_arg(item)
        concepts.append(PerfusionConcept.load(path))
        betas.append(concepts[-1].beta if beta is None else beta)
    embeddings = {path.stem: read_embedding(path).vectors for path in args.embedding}
    embeddings |= {concept.name: concept.embedding for concept in concepts}
    backend = DiffusersBackend.load(args.model, device=args.device)
    edits = editing.applied(backend.denoiser(), concepts, beta=betas) if concepts else nullcontext()
    with edits:
        image = backend.generate(
            args.prompt, embeddings, steps=args.steps, guidance=args.guidance, seed=args.seed
        )
    image.save(args.out)
    print(args.out)


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
