"""Formatting numbers for people, and the Jinja environment. No analysis happens here."""

from __future__ import annotations

import os
from typing import Any, Iterable

import jinja2
from tabulate import tabulate

# The repository's templates/ (a link inside the package, so an installed package carries it too).
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


def count(value: int | None) -> str:
    """13529600 -> '13,529,600'."""
    return "not measured" if value is None else f"{int(value):,}"


def short_count(value: float | None) -> str:
    """13529600 -> '13.5M'; 124439808 -> '124.4M'; 6738415616 -> '6.74B'."""
    if value is None:
        return "not measured"
    value = float(value)
    for divisor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= divisor:
            scaled = value / divisor
            return f"{scaled:.2f}{suffix}" if scaled < 10 else f"{scaled:.1f}{suffix}"
    return f"{value:g}"


def mib(value_bytes: float | None) -> str:
    """Bytes as MiB with one decimal (binary units: 1 MiB = 1,048,576 bytes)."""
    return "not measured" if value_bytes is None else f"{value_bytes / 2**20:,.1f} MiB"


def human_bytes(value_bytes: float | None) -> str:
    """Bytes in the largest binary unit that keeps the number >= 1 (KiB, MiB, GiB)."""
    if value_bytes is None:
        return "not measured"
    value = float(value_bytes)
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:,.2f} {unit}"
    return f"{int(value):,} B"


def flops(value: float | None) -> str:
    """FLOPs with an SI suffix: 1.23 GFLOP."""
    if value is None:
        return "not measured"
    value = float(value)
    for divisor, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= divisor:
            return f"{value / divisor:,.2f} {prefix}FLOP"
    return f"{value:,.0f} FLOP"


def seconds(value_seconds: float | None) -> str:
    """A duration with three significant digits in h, min, s, ms or µs: 0.00241 -> '2.41 ms'."""
    if value_seconds is None:
        return "not measured"
    for scale, unit in ((3600.0, "h"), (60.0, "min"), (1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if abs(value_seconds) >= scale:
            return f"{value_seconds / scale:.3g} {unit}"
    return f"{value_seconds / 1e-6:.3g} µs"


def sci(value: float | None, digits: int = 2) -> str:
    """5.4e-04 style for small quantities (gradient norms, learning rates)."""
    return "not measured" if value is None else f"{value:.{digits}e}"


def change(value: float | None, *, within: bool | None = None, tolerance: float | None = None,
           bound: str = "the tolerance", prefix: str = "by ") -> str:
    """How far an equality check's output moved: 'by 0.454' (PREFIX + 3 significant digits) above its
    tolerance; at or below it 'within tolerance: ≤ BOUND', never the figure (that is round-off, and it differs
    between CPUs' vector units, thread counts and BLAS). WITHIN is the check's own verdict, or give the
    absolute TOLERANCE."""
    if value is None:
        return "n/a"
    if within is None:
        if tolerance is None:
            raise ValueError("render.change needs the check's verdict (within=) or its tolerance (tolerance=)")
        within = value <= tolerance
    if within:
        return f"within tolerance: ≤ {bound}"
    return f"{prefix}{value:.3g}"


def shape(dims: Iterable[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def table(rows: list[list[Any]], headers: list[str], fmt: str = "simple") -> str:
    return tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)


def markdown_table(rows: list[list[Any]], headers: list[str]) -> str:
    return table(rows, headers, fmt="github")


FILTERS = {"count": count, "short_count": short_count, "mib": mib, "human_bytes": human_bytes,
           "flops": flops, "seconds": seconds, "sci": sci, "shape": shape, "change": change}


def environment(template_dir: str = TEMPLATE_DIR) -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(template_dir), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             autoescape=False)
    env.filters.update(FILTERS)
    return env


def render_template(name: str, context: dict[str, Any], template_dir: str = TEMPLATE_DIR) -> str:
    return environment(template_dir).get_template(name).render(**context)
