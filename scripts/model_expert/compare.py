"""What changed between two evidence files (`compare.py BASE.json HEAD.json`), for PR descriptions.

Each file is either the report's `analysis.json` ({"schema": "model-expert/report/1", "params": ...,
"memory": ..., ...}; any section may be missing) or one capability's `--json` output (its schema
names the section it fills). A quantity absent from a file is "not measured", never zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from . import render
from .cli_base import OneLineArgumentParser, add_output_options, call_reporting_errors, to_json
from .errors import UserError

SCHEMA = "model-expert/compare/1"
REPORT_SCHEMA_PREFIX = "model-expert/report/"
SECTIONS = ("params", "memory", "flops", "grads", "lint", "trace", "recommend")
NOT_MEASURED = "not measured"


def seconds(value: float | None) -> str:
    """Seconds in ms below one second: 0.01234 -> '12.34 ms'."""
    if value is None:
        return NOT_MEASURED
    return f"{value * 1e3:,.2f} ms" if abs(value) < 1 else f"{value:,.3f} s"


@dataclass(frozen=True)
class Metric:
    label: str
    section: str
    key: str
    format: Callable[[Any], str]


# The quantities compared, in table order: (section, top-level key of that section's JSON).
METRICS: tuple[Metric, ...] = (
    Metric("Parameters (total)", "params", "total", render.count),
    Metric("Parameters (trainable)", "params", "trainable", render.count),
    Metric("Peak training memory", "memory", "peak_bytes", render.human_bytes),
    Metric("Inference peak memory", "memory", "inference_peak_bytes", render.human_bytes),
    Metric("Forward FLOPs", "flops", "forward_flops", render.flops),
    Metric("Backward FLOPs", "flops", "backward_flops", render.flops),
    Metric("Estimated step time", "flops", "estimated_step_seconds", seconds),
)


def _finding_key_grads(finding: dict[str, Any]) -> tuple:
    return (finding.get("severity"), finding.get("kind"), finding.get("where"))


def _finding_key_lint(finding: dict[str, Any]) -> tuple:
    # Line numbers move with every edit above a finding, so they are not part of its identity.
    return (finding.get("severity"), finding.get("rule"), finding.get("file"), finding.get("code"))


def _describe_grads(finding: dict[str, Any]) -> str:
    return f"[{finding.get('severity')}] {finding.get('kind')} at {finding.get('where')}: {finding.get('message')}"


def _describe_lint(finding: dict[str, Any]) -> str:
    return (f"[{finding.get('severity')}] {finding.get('rule')} {finding.get('file')}:{finding.get('line')}: "
            f"{finding.get('message')}")


# section -> (identity of a finding, its one-line description)
FINDING_SECTIONS: dict[str, tuple[Callable[[dict], tuple], Callable[[dict], str]]] = {
    "grads": (_finding_key_grads, _describe_grads),
    "lint": (_finding_key_lint, _describe_lint),
}


def load_sections(path: str) -> dict[str, dict[str, Any]]:
    """The sections an evidence file holds: a report's, or the one a capability JSON fills."""
    if not os.path.isfile(path):
        raise UserError(f"'{path}' does not exist; pass analysis.json from report.py or a script's --json output")
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as error:
        raise UserError(f"'{path}' is not valid JSON ({error.msg} at line {error.lineno})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read '{path}': {error}") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith("model-expert/"):
        raise UserError(f"'{path}' has no model-expert schema (got {schema!r}); pass analysis.json from "
                        f"report.py or the --json output of {', '.join(s + '.py' for s in SECTIONS)}")
    if schema.startswith(REPORT_SCHEMA_PREFIX):
        return {name: data[name] for name in SECTIONS if isinstance(data.get(name), dict)}
    section = schema.split("/")[1]
    if section not in SECTIONS:
        raise UserError(f"'{path}' has schema '{schema}', which compare does not read; expected a report or "
                        f"one of {', '.join(SECTIONS)}")
    return {section: data}


def _number(sections: dict[str, dict[str, Any]], metric: Metric) -> float | None:
    value = sections.get(metric.section, {}).get(metric.key)
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_row(metric: Metric, base: dict, head: dict) -> dict[str, Any]:
    """Base, head, head - base and (head - base) / base; None where either side is not measured."""
    before, after = _number(base, metric), _number(head, metric)
    delta = after - before if before is not None and after is not None else None
    if delta is None:
        relative = None
    elif before != 0:
        relative = delta / before
    else:
        relative = 0.0 if delta == 0 else None  # growth from zero has no ratio
    return {"metric": metric.label, "section": metric.section, "key": metric.key,
            "base": before, "head": after, "delta": delta, "relative_delta": relative}


def finding_changes(section: str, base: dict, head: dict) -> dict[str, Any] | None:
    """Findings present in head but not base (added) and the reverse (removed), counted as multisets."""
    if section not in base and section not in head:
        return None
    key, describe = FINDING_SECTIONS[section]

    def findings(sections):
        if section not in sections:
            return None
        found = sections[section].get("findings")
        return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else None

    before, after = findings(base), findings(head)
    result: dict[str, Any] = {"base_count": None if before is None else len(before),
                              "head_count": None if after is None else len(after),
                              "added": [], "removed": []}
    if before is None or after is None:
        return result
    before_keys, after_keys = Counter(map(key, before)), Counter(map(key, after))
    added_left, removed_left = after_keys - before_keys, before_keys - after_keys
    for finding in after:
        if added_left[key(finding)] > 0:
            added_left[key(finding)] -= 1
            result["added"].append({**finding, "text": describe(finding)})
    for finding in before:
        if removed_left[key(finding)] > 0:
            removed_left[key(finding)] -= 1
            result["removed"].append({**finding, "text": describe(finding)})
    return result


def compare(base: dict[str, dict[str, Any]], head: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The comparison as data: metric rows, gradient stability, findings added/removed per section."""
    stability = {side: (sections.get("grads", {}).get("stability") if "grads" in sections else None)
                 for side, sections in (("base", base), ("head", head))}
    return {
        "metrics": [metric_row(m, base, head) for m in METRICS],
        "grad_stability": stability,
        "findings": {name: finding_changes(name, base, head) for name in FINDING_SECTIONS},
        "sections": {"base": sorted(base), "head": sorted(head)},
    }


def _signed(text: str, delta: float) -> str:
    return text if delta < 0 else "+" + text


def _format_delta(metric: Metric, row: dict[str, Any]) -> tuple[str, str]:
    if row["delta"] is None:
        return "—", "—"
    absolute = _signed(metric.format(row["delta"]), row["delta"]) if row["delta"] else "0"
    if row["relative_delta"] is None:
        relative = "n/a (base is 0)"
    else:
        relative = f"{row['relative_delta'] * 100:+.2f} %"
    return absolute, relative


def _format_value(metric: Metric, value: Any) -> str:
    return NOT_MEASURED if value is None else metric.format(value)


def render_markdown(result: dict[str, Any], base_name: str, head_name: str) -> str:
    rows = []
    for metric, row in zip(METRICS, result["metrics"]):
        rows.append([metric.label, _format_value(metric, row["base"]), _format_value(metric, row["head"]),
                     *_format_delta(metric, row)])
    stability = result["grad_stability"]
    rows.append(["Gradient stability", stability["base"] or NOT_MEASURED, stability["head"] or NOT_MEASURED,
                 "—" if stability["base"] == stability["head"] or None in stability.values() else "changed", "—"])
    for name, changes in result["findings"].items():
        label = f"{'Gradient' if name == 'grads' else 'Lint'} findings"
        if changes is None or changes["base_count"] is None or changes["head_count"] is None:
            rows.append([label, NOT_MEASURED if not changes or changes["base_count"] is None else str(changes["base_count"]),
                         NOT_MEASURED if not changes or changes["head_count"] is None else str(changes["head_count"]),
                         "—", "—"])
        else:
            rows.append([label, str(changes["base_count"]), str(changes["head_count"]),
                         f"+{len(changes['added'])} / -{len(changes['removed'])}", "—"])
    parts = [f"### Model changes: `{base_name}` → `{head_name}`", "",
             render.markdown_table(rows, ["quantity", "base", "head", "change", "relative"])]
    for name, changes in result["findings"].items():
        if changes and (changes["added"] or changes["removed"]):
            title = "Gradient findings" if name == "grads" else "Lint findings"
            parts += ["", f"**{title}**", ""]
            parts += [f"- added: {f['text']}" for f in changes["added"]]
            parts += [f"- removed: {f['text']}" for f in changes["removed"]]
    return "\n".join(parts)


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=prog, description="Compare two evidence files (report analysis.json or "
                                   "a capability's --json) and print what changed as a Markdown table.")
    parser.add_argument("base", metavar="BASE.json")
    parser.add_argument("head", metavar="HEAD.json")
    add_output_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "compare.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    result, code = call_reporting_errors(prog, args.debug, lambda: compare(load_sections(args.base), load_sections(args.head)))
    if result is None:
        return code
    if args.json:
        sys.stdout.write(to_json({"schema": SCHEMA, "base": args.base, "head": args.head, **result}))
    else:
        sys.stdout.write(render_markdown(result, args.base, args.head) + "\n")
    return 0
