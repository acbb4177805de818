"""Command line: `python -m captinv caption|invert|inspect ...`.

Flags of `invert` are generated from `InvertConfig`, so the CLI, the tab and the
API cannot drift apart. A `CaptinvError` is printed as one line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from captinv.config import InvertConfig
from captinv.errors import CaptinvError

log = logging.getLogger("captinv")


def _flag_kwargs(spec: dataclasses.Field) -> dict:
    hint = typing.get_type_hints(InvertConfig)[spec.name]
    kwargs: dict = {"help": f"{spec.metadata['help']} (default: {spec.default})", "default": spec.default}
    if spec.metadata.get("choices"):
        kwargs["choices"] = spec.metadata["choices"]
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    kwargs["type"] = base if base in (int, float) else str
    return kwargs


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
    invert.add_argument(
        "--model", required=True, help="Diffusers folder, hub id, .safetensors checkpoint, or 'miniworld'."
    )
    invert.add_argument(
        "--out", type=Path, default=Path("embeddings"), help="Output folder (default: ./embeddings)."
    )
    invert.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
    invert.add_argument(
        "--sample", action="store_true", help="Also render <name>.preview.png with the combined name."
    )
    for spec in dataclasses.fields(InvertConfig):
        invert.add_argument(f"--{spec.name.replace('_', '-')}", dest=spec.name, **_flag_kwargs(spec))

    inspect = commands.add_parser(
        "inspect", help="Show names, shapes, norms and metadata of embedding files."
    )
    inspect.add_argument("files", nargs="+", type=Path)
    return parser


def _config(args: argparse.Namespace) -> InvertConfig:
    known = {f.name for f in dataclasses.fields(InvertConfig)}
    return InvertConfig(**{k: v for k, v in vars(args).items() if k in known})


def _caption(args: argparse.Namespace) -> None:
    from captinv.captioning import init_source
    from captinv.images import load_images

    print(init_source(_config(args)).describe(load_images([args.image])))


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
    text = init_source(config, str(backend.device)).describe(images)
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
        {"caption": _caption, "invert": _invert, "inspect": _inspect}[args.command](args)
    except CaptinvError as err:
        print(f"captinv: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("captinv: interrupted; nothing was written.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
