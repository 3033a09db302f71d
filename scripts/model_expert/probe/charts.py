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


def line_chart(title: str, x_label: str, x_values: list[float], y_label: str, y_values: list[float]) -> str:
    """A fenced mermaid block: one line over numeric x labels. Non-finite points are left out by the caller."""
    if not y_values:
        return ""
    low, high = min(y_values), max(y_values)
    if low == high:
        low, high = low - 1, high + 1
    labels = ", ".join('"' + decimal(x) + '"' for x in x_values)
    points = ", ".join(decimal(y) for y in y_values)
    return "\n".join(["```mermaid", "xychart-beta", f'    title "{title}"', f'    x-axis "{x_label}" [{labels}]',
                      f'    y-axis "{y_label}" {decimal(low)} --> {decimal(high)}', f"    line [{points}]", "```"])


def overfit_chart(overfit: dict) -> str:
    """Loss before each step on the one batch (log10 when every loss is positive)."""
    finite = [(step, v) for step, v in enumerate(overfit["losses"]) if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return ""
    logarithmic = all(v > 0 for _, v in finite)
    steps = [s for s, _ in finite]
    values = [math.log10(v) if logarithmic else v for _, v in finite]
    indices, values = thin(values)
    return line_chart(f"Loss on one batch ({overfit['optimizer']}, lr {decimal(overfit['lr'])})", "step",
                      [steps[i] for i in indices], "log10(loss)" if logarithmic else "loss", values)


def lr_range_chart(lr_range: dict) -> str:
    """Smoothed loss against log10(LR) of the range test."""
    pairs = [(math.log10(lr), v) for lr, v in zip(lr_range["lrs"], lr_range["losses"])
             if isinstance(v, (int, float)) and math.isfinite(v)]
    if not pairs:
        return ""
    logarithmic = all(v > 0 for _, v in pairs)
    indices, values = thin([math.log10(v) if logarithmic else v for _, v in pairs])
    return line_chart("LR range test: smoothed loss", "log10(lr)", [round(pairs[i][0], 2) for i in indices],
                      "log10(smoothed loss)" if logarithmic else "smoothed loss", values)
