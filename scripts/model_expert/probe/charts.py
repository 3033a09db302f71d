"""Mermaid `xychart-beta` line charts (GitHub renders them): the one-batch loss curve and loss against log10(LR)."""

from __future__ import annotations

import math

MAX_POINTS = 60  # points per line; longer curves are sampled evenly (first and last kept)


def decimal(value: float) -> str:
    """A number mermaid's grammar reads: plain decimal, never 1e-05."""
    text = f"{value:.4g}"
    if "e" in text:
        text = f"{value:.0f}" if abs(value) >= 1 else f"{value:.12f}".rstrip("0").rstrip(".")
    return text


def thin(values: list[float], limit: int = MAX_POINTS) -> tuple[list[int], list[float]]:
    """(indices, values) of at most LIMIT evenly spaced points, first and last included."""
    if len(values) <= limit:
        return list(range(len(values))), list(values)
    indices = sorted({round(i * (len(values) - 1) / (limit - 1)) for i in range(limit)})
    return indices, [values[i] for i in indices]


def line_chart(series: dict | None) -> str:
    """A fenced mermaid block: one line over numeric x labels, from a series made by the functions below."""
    if not series or not series["y"]:
        return ""
    low, high = min(series["y"]), max(series["y"])
    if low == high:
        low, high = low - 1, high + 1
    labels = ", ".join('"' + decimal(x) + '"' for x in series["x"])
    points = ", ".join(decimal(y) for y in series["y"])
    return "\n".join(["```mermaid", "xychart-beta", f'    title "{series["title"]}"',
                      f'    x-axis "{series["x_label"]}" [{labels}]',
                      f'    y-axis "{series["y_label"]}" {decimal(low)} --> {decimal(high)}', f"    line [{points}]", "```"])


def overfit_series(overfit: dict) -> dict | None:
    """Loss before each step on the one batch (log10 when every loss is positive), thinned to MAX_POINTS."""
    finite = [(step, v) for step, v in enumerate(overfit["losses"]) if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return None
    logarithmic = all(v > 0 for _, v in finite)
    indices, values = thin([math.log10(v) if logarithmic else v for _, v in finite])
    return {"title": f"Loss on one batch ({overfit['optimizer']}, lr {decimal(overfit['lr'])})", "x_label": "step",
            "x": [finite[i][0] for i in indices], "y_label": "log10(loss)" if logarithmic else "loss", "y": values}


def lr_range_series(lr_range: dict) -> dict | None:
    """Smoothed loss (log10 when every value is positive) against log10(LR) of the range test."""
    pairs = [(math.log10(lr), v) for lr, v in zip(lr_range["lrs"], lr_range["losses"])
             if isinstance(v, (int, float)) and math.isfinite(v)]
    if not pairs:
        return None
    logarithmic = all(v > 0 for _, v in pairs)
    indices, values = thin([math.log10(v) if logarithmic else v for _, v in pairs])
    return {"title": "LR range test: smoothed loss", "x_label": "log10(lr)", "x": [round(pairs[i][0], 2) for i in indices],
            "y_label": "log10(smoothed loss)" if logarithmic else "smoothed loss", "y": values}
