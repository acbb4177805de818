"""The concepts to invert and, for each initialisation mode, the text it starts from."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from bench.miniworld.world import COLOURS, HELD_OUT, POSITIONS, Scene, detect

# Every mode starts from text except `random`, which starts from random vectors laid out like the
# caption's words (same count), so that it differs from `caption` only in where the vectors start.
MODES = ("caption", "noisy-caption", "classify", "word", "star", "random")
MINIWORLD_RESOLUTION = 32


@dataclass
class Concept:
    """One image and what each mode starts from; `truth` is what a detector should read back."""

    name: str
    image: Image.Image
    caption: str  # the reference description: the model's loss for it marks 'as good as the truth'
    inits: dict[str, str] = field(default_factory=dict)  # mode -> init text (random: the layout)
    truth: dict[str, str] | None = None

    @property
    def modes(self) -> list[str]:
        return [mode for mode in MODES if mode in self.inits]


def _wrong_colour(colour: str) -> str:
    """The next palette colour: a captioner's typical slip, one word wrong, the rest right."""
    names = list(COLOURS)
    return names[(names.index(colour) + 1) % len(names)]


def miniworld_concept(scene: Scene) -> Concept:
    """A held-out scene, rendered without jitter, with the inits a user of the mini world has:
    the generator's caption (the stand-in for BLIP), the same with a wrong colour, the detector's
    label (a classifier's answer: colour and shape), the shape word alone, `*`, random vectors."""
    image = scene.render(MINIWORLD_RESOLUTION)
    caption = scene.caption()
    found = detect(image)
    noisy = Scene(_wrong_colour(scene.colour), scene.shape, scene.size, scene.position).caption()
    return Concept(
        name=f"{scene.colour}-{scene.shape}-{scene.size}-{scene.position}",
        image=image,
        caption=caption,
        inits={
            "caption": caption,
            "noisy-caption": noisy,
            "classify": f"{found.get('colour', '')} {found.get('shape', '')}".strip() or "*",
            "word": scene.shape,
            "star": "*",
            "random": caption,
        },
        truth={"colour": scene.colour, "shape": scene.shape, "size": scene.size, "position": scene.position},
    )


def miniworld_concepts(count: int) -> list[Concept]:
    """`count` held-out concepts cycling through the held-out pairs, sizes and positions."""
    positions = list(POSITIONS)
    scenes = [
        Scene(colour, shape, ("big", "small")[(i // len(HELD_OUT)) % 2], positions[i % len(positions)])
        for i, (colour, shape) in ((i, HELD_OUT[i % len(HELD_OUT)]) for i in range(count))
    ]
    return [miniworld_concept(scene) for scene in scenes]


def user_concepts(
    images: list[str],
    captions: list[str],
    noisy: list[str] | None = None,
    labels: list[str] | None = None,
    words: list[str] | None = None,
) -> list[Concept]:
    """Concepts from the user's own images; a mode whose texts were not given is left out."""
    from pathlib import Path

    from captinv.images import load_image

    if len(captions) != len(images):
        raise SystemExit("give one --captions entry per image")
    concepts = []
    for i, (path, caption) in enumerate(zip(images, captions)):
        inits = {"caption": caption, "star": "*", "random": caption}
        for mode, texts in (("noisy-caption", noisy), ("classify", labels), ("word", words)):
            if texts:
                inits[mode] = texts[i]
        concepts.append(Concept(Path(path).stem, load_image(path), caption, inits))
    return concepts
