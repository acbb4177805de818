"""Per-mode statistics of many runs, and the figure of their curves (drawn with Pillow)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bench.convergence.measure import Run

COLOURS = {
    "caption": (31, 119, 180),
    "noisy-caption": (44, 160, 44),
    "classify": (148, 103, 189),
    "word": (255, 127, 14),
    "star": (214, 39, 40),
    "random": (127, 127, 127),
}


def _median_steps(values: Sequence[int | None]) -> float:
    """Median with 'never reached' counted as infinitely many steps."""
    return statistics.median(math.inf if value is None else value for value in values)


def summarise(runs: list[Run], threshold: float) -> dict:
    """For each mode: the normalised curve's mean, spread and quartiles; steps to `threshold`;
    reconstruction scores. Medians are over every (concept, seed) run of the mode."""
    modes = list(dict.fromkeys(run.mode for run in runs))
    summary: dict = {}
    for mode in modes:
        mine = [run for run in runs if run.mode == mode]
        gaps = np.array([run.gap for run in mine])
        reached = [run.steps_to(threshold) for run in mine]
        score_steps = sorted({step for run in mine for step in run.scores})
        median = _median_steps(reached)
        summary[mode] = {
            "runs": len(mine),
            "steps": mine[0].steps,
            "gap_mean": gaps.mean(0).round(4).tolist(),
            "gap_std": gaps.std(0).round(4).tolist(),
            "gap_q25": np.quantile(gaps, 0.25, axis=0).round(4).tolist(),
            "gap_q75": np.quantile(gaps, 0.75, axis=0).round(4).tolist(),
            "steps_to_threshold": reached,
            "median_steps_to_threshold": None if math.isinf(median) else median,
            "reached_fraction": sum(r is not None for r in reached) / len(reached),
            "score": {
                str(step): {
                    "mean": round(statistics.fmean(run.scores[step] for run in mine), 4),
                    "median": round(statistics.median(run.scores[step] for run in mine), 4),
                }
                for step in score_steps
            },
            "seconds_per_run": round(statistics.fmean(run.seconds for run in mine), 2),
        }
    star = summary.get("star", {}).get("median_steps_to_threshold")
    for values in summary.values():
        mine = values["median_steps_to_threshold"]
        values["speedup_vs_star"] = round(star / mine, 2) if star and mine else None
    return summary


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


@dataclass
class Curve:
    """One line of a figure: a mean against x, with an optional band (e.g. the interquartile range)."""

    label: str
    colour: tuple[int, int, int]
    x: Sequence[float]
    mean: Sequence[float]
    low: Sequence[float] | None = None
    high: Sequence[float] | None = None


@dataclass
class Marker:
    """A labelled point, e.g. where a kind of run stopped and what it reached."""

    label: str
    colour: tuple[int, int, int]
    x: float
    y: float


def draw_curves(
    curves: Sequence[Curve],
    *,
    title: str,
    y_label: str,
    y_range: tuple[float, float],
    x_label: str = "steps",
    levels: Sequence[tuple[float, str]] = (),
    markers: Sequence[Marker] = (),
    width: int = 960,
    height: int = 560,
) -> Image.Image:
    """Curves with their bands, dashed reference levels and markers; values outside `y_range` are clipped."""
    left, right, top, bottom = 80, 250, 64, 60
    low, high = y_range
    x_max = max(max(curve.x) for curve in curves)

    def xy(x: float, value: float) -> tuple[float, float]:
        value = min(max(value, low), high)
        return (
            left + (width - left - right) * x / max(x_max, 1),
            top + (height - top - bottom) * (high - value) / (high - low),
        )

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, large = _font(14), _font(18)
    for tick in np.linspace(low, high, 7):
        draw.line([xy(0, tick), xy(x_max, tick)], fill=(232, 232, 232))
        draw.text((left - 8, xy(0, tick)[1]), f"{tick:.2f}", fill="black", font=small, anchor="rm")
    for tick in np.linspace(0, x_max, 6):
        draw.text(
            (xy(tick, low)[0], height - bottom + 8), f"{tick:.0f}", fill="black", font=small, anchor="ma"
        )
    for level, label in levels:
        y = xy(0, level)[1]
        for x in range(left, width - right, 12):
            draw.line([(x, y), (x + 6, y)], fill=(90, 90, 90))
        draw.text((width - right + 4, y), label, fill=(90, 90, 90), font=small, anchor="lm")
    bands = Image.new("RGBA", image.size, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(bands)
    for curve in curves:
        if curve.low is not None and curve.high is not None:
            outline = [xy(x, v) for x, v in zip(curve.x, curve.high)]
            outline += [xy(x, v) for x, v in zip(curve.x[::-1], curve.low[::-1])]
            band_draw.polygon(outline, fill=(*curve.colour, 40))
    image.paste(bands, mask=bands)
    draw = ImageDraw.Draw(image)
    for row, curve in enumerate(curves):
        draw.line([xy(x, v) for x, v in zip(curve.x, curve.mean)], fill=curve.colour, width=3)
        y = top + 150 + 24 * row
        draw.line([(width - right + 120, y), (width - right + 145, y)], fill=curve.colour, width=3)
        draw.text((width - right + 150, y), curve.label, fill="black", font=small, anchor="lm")
    for marker in markers:
        x, y = xy(marker.x, marker.y)
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], fill=marker.colour, outline="black", width=2)
        draw.text((x + 10, y - 10), marker.label, fill="black", font=small, anchor="ld")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text(((left + width - right) / 2, 10), title, fill="black", font=large, anchor="ma")
    draw.text(((left + width - right) / 2, height - 24), x_label, fill="black", font=small, anchor="ma")
    draw.text((left, top - 24), y_label, fill="black", font=small)
    return image


def plot(summary: dict, threshold: float, title: str, width: int = 960, height: int = 560) -> Image.Image:
    """Mean normalised loss per mode against steps, with its interquartile band and the threshold."""
    modes = list(summary)
    low = min(min(summary[m]["gap_q25"]) for m in modes)
    high = max(max(summary[m]["gap_q75"]) for m in modes)
    # Above "no text" only the first steps of a wrong start are; they are clipped to keep the end readable.
    y_range = (min(low, threshold) - 0.05, min(max(high, 1.0), 1.25) + 0.05)
    curves = [
        Curve(mode, COLOURS.get(mode, (0, 0, 0)), v["steps"], v["gap_mean"], v["gap_q25"], v["gap_q75"])
        for mode, v in summary.items()
    ]
    return draw_curves(
        curves,
        title=title,
        y_label="normalised loss: 1 = no text, 0 = the plain caption",
        y_range=y_range,
        levels=((1.0, "no text"), (0.0, "plain caption"), (threshold, "threshold")),
        width=width,
        height=height,
    )
