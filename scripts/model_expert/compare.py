"""What changed between two evidence files (`compare.py BASE.json HEAD.json`), for PR descriptions; or, in one
command, between a git revision and the working tree (`compare.py --base REV TARGET [report options]`: the review
runs on REV in a temporary git worktree, removed afterwards, and on the working tree).

Each file is either the report's `analysis.json` ({"schema": "model-expert/report/1", "params": ...,
"memory": ..., ...}; any section may be missing) or one capability's `--json` output (its schema
names the section it fills). A quantity absent from a file is "not measured", never zero.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from . import render
from .cli_base import OneLineArgumentParser, add_output_options, call_reporting_errors, to_json
from .errors import UserError

SCHEMA = "model-expert/compare/1"
REPORT_SCHEMA_PREFIX = "model-expert/report/"
SECTIONS = ("params", "memory", "flops", "grads", "lint", "trace", "recommend", "contract", "probe", "summary")
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


def _lr(value: float) -> str:
    return f"{value:.3g}"


def _whole(value: float) -> str:
    return f"{value:+,.0f}" if value < 0 else f"{value:,.0f}"


# The quantities compared, in table order: (section, top-level key of that section's JSON).
# The review's summary first (at the batch each review recommends, its rows say which), then the rest.
METRICS: tuple[Metric, ...] = (
    Metric("Training memory (summary's batch)", "summary", "peak_bytes", render.human_bytes),
    Metric("Training step (summary's batch)", "summary", "step_seconds", seconds),
    Metric("Largest batch that fits", "summary", "max_batch_size", render.count),
    Metric("Starting learning rate", "summary", "lr", _lr),
    Metric("Priority 1 issues", "summary", "p1_count", render.count),
    Metric("Priority 2 issues", "summary", "p2_count", render.count),
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


def _finding_key_check(finding: dict[str, Any]) -> tuple:
    return (finding.get("severity"), finding.get("check"), finding.get("input"), finding.get("dim"), finding.get("module"))


def _describe_check(finding: dict[str, Any]) -> str:
    return f"[{finding.get('severity')}] {finding.get('check')}: {finding.get('text')}"


# section -> (identity of a finding, its one-line description)
FINDING_SECTIONS: dict[str, tuple[Callable[[dict], tuple], Callable[[dict], str]]] = {
    "grads": (_finding_key_grads, _describe_grads),
    "lint": (_finding_key_lint, _describe_lint),
    "contract": (_finding_key_check, _describe_check),
    "probe": (_finding_key_check, _describe_check),
}
FINDING_TITLES = {"grads": "Gradient findings", "lint": "Lint findings", "contract": "Contract findings",
                  "probe": "Training-dynamics findings"}


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
        "summary_batches": {side: (sections.get("summary") or {}).get("batch_label") or (sections.get("summary") or {}).get("batch")
                            for side, sections in (("base", base), ("head", head))},
        "issues": issue_changes(base, head),
    }


def issue_changes(base: dict, head: dict) -> dict[str, list[str]]:
    """The review's issue titles (Priority 1 and 2) new in head and resolved since base."""
    def titles(sections):
        summary = sections.get("summary") or {}
        return [f"[P1] {t}" for t in summary.get("p1", [])] + [f"[P2] {t}" for t in summary.get("p2", [])]
    before, after = Counter(titles(base)), Counter(titles(head))
    return {"new": sorted((after - before).elements()), "resolved": sorted((before - after).elements())}


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
        if changes is None and name in ("contract", "probe"):
            continue  # an older evidence file without them: no row rather than two "not measured"
        label = FINDING_TITLES[name]
        if changes is None or changes["base_count"] is None or changes["head_count"] is None:
            rows.append([label, NOT_MEASURED if not changes or changes["base_count"] is None else str(changes["base_count"]),
                         NOT_MEASURED if not changes or changes["head_count"] is None else str(changes["head_count"]),
                         "—", "—"])
        else:
            rows.append([label, str(changes["base_count"]), str(changes["head_count"]),
                         f"+{len(changes['added'])} / -{len(changes['removed'])}", "—"])
    parts = [f"### Model changes: `{base_name}` → `{head_name}`", ""]
    batches = result.get("summary_batches") or {}
    if any(batches.values()):
        parts += [f"_The summary's rows are at each review's batch (base: {batches.get('base') or NOT_MEASURED}; "
                  f"head: {batches.get('head') or NOT_MEASURED}); memory, FLOPs and step time below the parameters "
                  f"are at the traced batch._", ""]
    parts.append(render.markdown_table(rows, ["quantity", "base", "head", "change", "relative"]))
    issues = result.get("issues") or {}
    if issues.get("new") or issues.get("resolved"):
        parts += ["", "**Issues**", ""]
        parts += [f"- new: {title}" for title in issues["new"]]
        parts += [f"- resolved: {title}" for title in issues["resolved"]]
    for name, changes in result["findings"].items():
        if changes and (changes["added"] or changes["removed"]):
            title = FINDING_TITLES[name]
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


def build_base_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog=prog, allow_abbrev=False, description="Review TARGET at git revision REV (in a temporary worktree, "
                                   "removed afterwards) and in the working tree, and print what changed. Every other "
                                   "option is report.py's, passed to both reviews.")
    parser.add_argument("--base", required=True, metavar="REV", help="the git revision to compare against (HEAD~1, main)")
    parser.add_argument("--keep", metavar="DIR", help="keep both reviews in DIR/base and DIR/head")
    add_output_options(parser)
    return parser


def _git(args: list[str], cwd: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("--base needs git on PATH") from None
    if done.returncode != 0:
        raise UserError(f"git {' '.join(args)} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return done.stdout.strip()


def _review(report_args: list[str], cwd: str, out: str, side: str, debug: bool) -> dict[str, dict[str, Any]]:
    """Run this installation's report.py on one side (cwd: that side's copy of the repository)."""
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": package_parent + os.pathsep + os.environ.get("PYTHONPATH", "")}
    sys.stderr.write(f"compare: reviewing {side} ...\n")
    sys.stderr.flush()
    done = subprocess.run([sys.executable, "-m", "model_expert", "report", *report_args, "--out", out,
                           *(["--debug"] if debug else [])], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise UserError(f"the review of {side} failed: {last}")
    return load_sections(os.path.join(out, "analysis.json"))


def compare_base(rev: str, report_args: list[str], keep: str | None = None, debug: bool = False) -> dict[str, Any]:
    """Review at REV (a temporary detached worktree of the repository holding the current directory, removed
    afterwards) and in the working tree as it is, from the same relative directory; then compare."""
    if any(a == "--out" or a.startswith("--out=") for a in report_args):
        raise UserError("compare.py --base writes the reviews itself; drop --out (use --keep DIR to keep them)")
    if not report_args or report_args[0].startswith("-"):
        raise UserError("compare.py --base REV needs the TARGET to review (FILE.py:Class) and report.py's options")
    cwd = os.getcwd()
    top = _git(["rev-parse", "--show-toplevel"], cwd)
    commit = _git(["rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], top)
    relative = os.path.relpath(cwd, top)
    scratch = tempfile.mkdtemp(prefix="model-expert-compare-")
    worktree = os.path.join(scratch, "base")
    outs = {side: os.path.join(os.path.abspath(keep), side) if keep else os.path.join(scratch, side)
            for side in ("base_review", "head_review")}
    try:
        _git(["worktree", "add", "--detach", "--quiet", worktree, commit], top)
        try:
            base = _review(report_args, os.path.normpath(os.path.join(worktree, relative)), outs["base_review"],
                           f"{rev} ({commit[:12]})", debug)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", worktree], cwd=top, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=top, capture_output=True)
        head = _review(report_args, cwd, outs["head_review"], "the working tree", debug)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"base_rev": rev, "base_commit": commit, **compare(base, head)}


def main(argv: list[str] | None = None, prog: str = "compare.py") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--base" or a.startswith("--base=") for a in argv):
        base_args, report_args = build_base_parser(prog).parse_known_args(argv)
        result, code = call_reporting_errors(prog, base_args.debug, lambda: compare_base(
            base_args.base, report_args, base_args.keep, base_args.debug))
        if result is None:
            return code
        if base_args.json:
            sys.stdout.write(to_json({"schema": SCHEMA, "base": base_args.base, "head": "working tree", **result}))
        else:
            sys.stdout.write(render_markdown(result, f"{base_args.base} ({result['base_commit'][:12]})", "working tree") + "\n")
        return 0
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
