"""Per-mode statistics of many runs, and the figure of their curves (drawn with Pillow)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

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


def plot(summary: dict, threshold: float, title: str, width: int = 960, height: int = 560) -> Image.Image:
    """Mean normalised loss per mode against steps, with its interquartile band and the threshold."""
    left, right, top, bottom = 80, 250, 64, 60
    modes = list(summary)
    steps = summary[modes[0]]["steps"]
    low = min(min(summary[m]["gap_q25"]) for m in modes)
    high = max(max(summary[m]["gap_q75"]) for m in modes)
    # Above "no text" only the first steps of a wrong start are; they are clipped to keep the end readable.
    low, high = min(low, threshold) - 0.05, min(max(high, 1.0), 1.25) + 0.05

    def xy(step: float, value: float) -> tuple[float, float]:
        value = min(max(value, low), high)
        x = left + (width - left - right) * step / max(steps[-1], 1)
        y = top + (height - top - bottom) * (high - value) / (high - low)
        return x, y

    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    small, large = _font(14), _font(18)
    for tick in np.linspace(low, high, 7):
        draw.line([xy(0, tick), xy(steps[-1], tick)], fill=(232, 232, 232))
        draw.text((left - 8, xy(0, tick)[1]), f"{tick:.2f}", fill="black", font=small, anchor="rm")
    for tick in np.linspace(0, steps[-1], 6):
        draw.text(
            (xy(tick, low)[0], height - bottom + 8), f"{tick:.0f}", fill="black", font=small, anchor="ma"
        )
    for level, label in ((1.0, "no text"), (0.0, "plain caption"), (threshold, "threshold")):
        y = xy(0, level)[1]
        for x in range(left, width - right, 12):
            draw.line([(x, y), (x + 6, y)], fill=(90, 90, 90))
        draw.text((width - right + 4, y), label, fill=(90, 90, 90), font=small, anchor="lm")
    bands = Image.new("RGBA", image.size, (0, 0, 0, 0))
    band_draw = ImageDraw.Draw(bands)
    for mode in modes:
        q25, q75 = summary[mode]["gap_q25"], summary[mode]["gap_q75"]
        outline = [xy(s, v) for s, v in zip(steps, q75)] + [xy(s, v) for s, v in zip(steps[::-1], q25[::-1])]
        band_draw.polygon(outline, fill=(*COLOURS.get(mode, (0, 0, 0)), 40))
    image.paste(bands, mask=bands)
    draw = ImageDraw.Draw(image)
    for row, mode in enumerate(modes):
        colour = COLOURS.get(mode, (0, 0, 0))
        draw.line([xy(s, v) for s, v in zip(steps, summary[mode]["gap_mean"])], fill=colour, width=3)
        y = top + 150 + 24 * row
        draw.line([(width - right + 120, y), (width - right + 145, y)], fill=colour, width=3)
        draw.text((width - right + 150, y), mode, fill="black", font=small, anchor="lm")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text(((left + width - right) / 2, 10), title, fill="black", font=large, anchor="ma")
    draw.text(((left + width - right) / 2, height - 24), "steps", fill="black", font=small, anchor="ma")
    draw.text(
        (left, top - 24), "normalised loss: 1 = no text, 0 = the plain caption", fill="black", font=small
    )
    return image
