"""Pictures of a benchmark's result (``muheam bench ... --report DIR``): the JSON and a PNG of its figures.

A result is a flat-ish dict of numbers.  Numbers whose keys share a first word (``tps_postgres``, ``tps_muheam_1``,
``tps_muheam_3``) are the same figure for systems side by side: one panel of bars each.  Every other number gets
its own bar in a panel of the remaining figures (each bar labelled with its value, since their units differ).
Drawn with matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_PANELS = 9


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def panels(result: dict[str, Any]) -> list[tuple[str, dict[str, float]]]:
    """The figure's panels: ``(title, {bar label: value})``; groups of systems first, then the rest."""
    nums = _numbers(result)
    groups: dict[str, dict[str, float]] = {}
    for key, value in nums.items():
        head, _, tail = key.partition("_")
        groups.setdefault(head, {})[tail or head] = value
    side = [(head, bars) for head, bars in groups.items() if len(bars) >= 2]
    alone = {f"{head}_{tail}" if tail != head else head: v for head, bars in groups.items() if len(bars) < 2
             for tail, v in bars.items()}
    out = side[:MAX_PANELS - 1]
    if alone:
        out.append(("other figures", dict(list(alone.items())[:16])))
    return out


def write(result: dict[str, Any], directory: Path, name: str) -> dict[str, str]:
    """``DIR/NAME.json`` and ``DIR/NAME.png``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    js, png = directory / f"{name}.json", directory / f"{name}.png"
    js.write_text(json.dumps(result, indent=1, default=str))
    parts = panels(result) or [("no numbers in the result", {})]
    cols = min(3, len(parts))
    rows = math.ceil(len(parts) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, bars) in zip(axes.flat, parts):
        labels = list(bars)
        ax.bar(range(len(labels)), [bars[k] for k in labels], color="steelblue")
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(title, fontsize=9)
        for i, k in enumerate(labels):
            ax.annotate(f"{bars[k]:.4g}", (i, bars[k]), ha="center", va="bottom", fontsize=7)
    for ax in list(axes.flat)[len(parts):]:
        ax.axis("off")
    fig.suptitle(f"muheam bench {name}")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return {"json": str(js), "png": str(png)}
