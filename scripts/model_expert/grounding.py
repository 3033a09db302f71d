"""Is every number in a review matched by measured evidence about the same thing? (`check_grounding.py`)

A number in the review is read in its context (`review_context`): the bold label, table column,
block or heading it sits under, or in prose the subject words nearest it. The vocabulary
(`vocabulary`, data in templates/analysis.vocabulary.toml) says which evidence paths each subject
has. The number is *grounded* when some value under those paths (a numeric leaf, or a number
written inside one of its strings) rounds to it as written; a value found only under an unrelated
path is a *mismatch*; prose whose words name no measured subject is *unsupported*; a label the
vocabulary lacks is *unlabelled*. A line naming a GPU is matched only by evidence measured for it.

Rounding: a number
written with its last digit in place u matches an evidence value v when |v - x| <= u/2, after
the unit is applied (13.5M = 13.5e6 +- 0.05e6; 51.6 MiB = 51.6 x 2**20 +- 0.05 x 2**20;
45 % = 45 +- 0.5 or a ratio 0.45 +- 0.005). Every written digit counts, trailing zeros too:
"10M" claims 10.0e6 +- 0.5e6, so it does not match 13,529,600.

Numbers that are not claims (ordinals, names, versions, dates, links, GPU names) are exempt by one
of the rules in EXEMPTIONS, and numbers inside a `code span` quoting an evidence string verbatim
are grounded by that string; nothing else is. Without a vocabulary (`check_text(text, evidence)`)
any evidence value grounds a number, as before.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from . import review_context
from . import vocabulary as vocabulary_module
from .cli_base import OneLineArgumentParser, add_output_options, call_reporting_errors, to_json
from .errors import UserError
from .vocabulary import Vocabulary

SCHEMA = "model-expert/check_grounding/1"

# unit as written -> the multipliers it may mean (a number is grounded if any reading matches).
# Counts (K/M/B/T), decimal bytes (KB/MB/GB/TB), binary bytes (KiB...), FLOP prefixes, time,
# percent (of 100 or of a ratio), and multipliers ("4x"). "B" is billions or bytes.
UNITS: dict[str, tuple[float, ...]] = {
    "K": (1e3,), "k": (1e3,), "M": (1e6,), "B": (1e9, 1.0), "T": (1e12,),
    "bytes": (1.0,), "byte": (1.0,),
    "KB": (1e3,), "kB": (1e3,), "MB": (1e6,), "GB": (1e9,), "TB": (1e12,),
    "KiB": (2.0**10,), "MiB": (2.0**20,), "GiB": (2.0**30,), "TiB": (2.0**40,),
    "FLOP": (1.0,), "FLOPs": (1.0,), "FLOPS": (1.0,),
    "KFLOP": (1e3,), "MFLOP": (1e6,), "GFLOP": (1e9,), "TFLOP": (1e12,), "PFLOP": (1e15,),
    "KFLOPs": (1e3,), "MFLOPs": (1e6,), "GFLOPs": (1e9,), "TFLOPs": (1e12,), "PFLOPs": (1e15,),
    "KFLOPS": (1e3,), "MFLOPS": (1e6,), "GFLOPS": (1e9,), "TFLOPS": (1e12,), "PFLOPS": (1e15,),
    "ns": (1e-9,), "us": (1e-6,), "µs": (1e-6,), "ms": (1e-3,), "s": (1.0,), "sec": (1.0,),
    "seconds": (1.0,), "min": (60.0,), "minutes": (60.0,), "h": (3600.0,), "hours": (3600.0,),
    "hrs": (3600.0,),
    "%": (1.0, 0.01), "percent": (1.0, 0.01),
    "x": (1.0,), "×": (1.0,),
}
_UNIT_ALTERNATION = "|".join(re.escape(u) for u in sorted(UNITS, key=len, reverse=True))
_NUMBER_RE = re.compile(
    r"(?<![\d,.])(?P<sign>[-−+])?"
    r"(?P<mantissa>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?:[eE](?P<exponent>[-−+]?\d+))?"
    r"(?![\d])")
_UNIT_RE = re.compile(r"[ \u00a0]?(?P<unit>" + _UNIT_ALTERNATION + r")(?![A-Za-z0-9_])")
_RANGE_RE = re.compile(r"\s*(?:–|—|-|to|\.\.)\s*")


@dataclass
class NumberToken:
    """One number as written in a line, with the unit after it (if any)."""

    text: str
    start: int
    end: int  # end of the number, before the unit
    value: float  # signed, unit not applied
    place: float  # the value of one unit in the last written digit (13.53 -> 0.01)
    unit: str | None
    parts: list[tuple[float, float]] = field(default_factory=list)  # "32,200,512" read as a list

    def candidates(self, unit: str | None = None) -> list[tuple[float, float]]:
        """(value, tolerance) for every reading of the unit."""
        unit = unit if unit is not None else self.unit
        return [(self.value * m, self.place * m / 2) for m in UNITS.get(unit or "", (1.0,))]


def _sign(text: str | None) -> float:
    return -1.0 if text in ("-", "−") else 1.0


_GROUPED_RE = re.compile(r"^\d{1,3}(,\d{3})+$")


def _parse_token(match: re.Match, line: str) -> NumberToken | None:
    """The number a match reads, or None for one no float can hold ('3e7d9e4411', a hash, reads as 3 x 10**7...)."""
    exponent_text = (match.group("exponent") or "0").replace("−", "-")
    if abs(int(exponent_text)) > 300:
        return None
    mantissa = match.group("mantissa")
    digits = mantissa.replace(",", "")
    decimals = len(digits.partition(".")[2])
    exponent = int((match.group("exponent") or "0").replace("−", "-"))
    sign_text = match.group("sign")
    start = match.start()
    if sign_text and start > 0 and (line[start - 1].isalnum() or line[start - 1] in ")]_"):
        sign_text, start = None, start + 1  # "5-10": a range, not minus ten
    sign = _sign(sign_text)
    value = sign * float(digits) * 10.0**exponent
    place = 10.0 ** (exponent - decimals)
    unit_match = _UNIT_RE.match(line, match.end())
    unit = unit_match.group("unit") if unit_match else None
    parts = []
    # "3,488,001" is one thousands-grouped number; only a token that is not valid grouping ("32,200,51")
    # or that stands inside brackets ("[32,200,512]", a shape) may be read as a list of numbers.
    bracketed = start > 0 and line[start - 1] in "[(," and line[match.end():match.end() + 1] in ("]", ")", ",")
    if "," in mantissa and "." not in mantissa and (bracketed or not _GROUPED_RE.match(mantissa)):
        parts = [(float(p) * 10.0**exponent, 10.0**exponent / 2) for p in mantissa.split(",")]
    return NumberToken(text=line[start:match.end()] + (unit_match.group(0) if unit_match else ""),
                       start=start, end=match.end(), value=value, place=place, unit=unit, parts=parts)


# ---- exemptions: numbers that are not claims. One table; each rule says why. ----------------

@dataclass(frozen=True)
class Exemption:
    id: str
    description: str
    applies: Callable[..., bool]  # (line, number, quoted rule texts, names the evidence gives)


def _span_rule(*patterns: str) -> Callable[[str, NumberToken, tuple[str, ...]], bool]:
    """Exempt a number lying inside group 1 of a pattern (the whole match where group 1 took no part)."""
    regexes = [re.compile(p) for p in patterns]

    def applies(line: str, token: NumberToken, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> bool:
        for regex in regexes:
            for match in regex.finditer(line):
                group = 1 if regex.groups and match.group(1) is not None else 0
                if match.start(group) <= token.start and token.end <= match.end(group):
                    return True
        return False
    return applies


def _glued_to_name(line: str, token: NumberToken, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> bool:
    """float32, bf16, rtx3060-12gb, layers.0.weight, GPT-2, x86_64: digits that are part of a name."""
    i = token.start
    if i > 0 and (line[i - 1].isalpha() or line[i - 1] == "_"):
        return True
    if i > 1 and line[i - 1] in "-.":
        j = i - 1
        while j > 0 and (line[j - 1].isalnum() or line[j - 1] in "_.-"):
            j -= 1
        return line[j].isalpha() or line[j] == "_"
    return False


def _inside(line: str, token: NumberToken, texts: tuple[str, ...], ignore_case: bool = False) -> bool:
    haystack = line.lower() if ignore_case else line
    for quote in texts:
        quote = quote.lower() if ignore_case else quote
        start = haystack.find(quote)
        while start != -1:
            if start <= token.start and token.end <= start + len(quote):
                return True
            start = haystack.find(quote, start + 1)
    return False


def _inside_evidence_name(line: str, token: NumberToken, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> bool:
    """Inside a name the evidence gives a GPU ('NVIDIA GeForce RTX 3060 12 GB'): a name, not a claim."""
    return _inside(line, token, names, ignore_case=True)


def _inside_quoted_rule(line: str, token: NumberToken, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> bool:
    """Inside a verbatim copy of a rule's source text from the evidence (its rule_text)."""
    return _inside(line, token, quotes)


_MONTHS = r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)[a-z]*\.?"

EXEMPTIONS: tuple[Exemption, ...] = (
    Exemption("heading-ordinal", "a Markdown heading's section number: '### 4. Training', '## 4.1 LR'",
              _span_rule(r"^\s{0,3}#{1,6}\s+(\d+(?:\.\d+)*)[.)]?\s")),
    Exemption("list-ordinal", "a numbered list item's number: '1. Fix the mask'",
              _span_rule(r"^\s*(?:>\s*)*(\d+)[.)]\s")),
    Exemption("label-ordinal", "an ordinal after a label: 'Priority 1', 'Step 2', 'Stage 3', 'Phase 1', '§4'",
              _span_rule(r"\b(?:Priority|Step|Stage|Phase)\s+(\d+)\b", r"§\s?(\d+(?:\.\d+)*)")),
    Exemption("name", "digits inside a name: dtypes (float32, int64, bf16), GPUs (V100, rtx3060-12gb), "
              "module paths (layers.0.attn), GPT-2", _glued_to_name),
    Exemption("version", "a version number: three dotted parts (2.13.0), or after a package name (Python 3.11)",
              _span_rule(r"\b(\d+\.\d+\.\d+(?:\.\d+)*)\b",
                         r"(?i:\b(?:python|pytorch|torch|cuda|cudnn|transformers|numpy|version)\s+v?)(\d+(?:\.\d+)*)")),
    Exemption("date", "a date or a cited year: 2024-05-01, May 2024, (2017)",
              _span_rule(r"\b\d{4}-\d{2}-\d{2}\b", r"\b" + _MONTHS + r"\s+(?:\d{1,2},?\s+)?\d{4}\b",
                         r"\(\s*(?:19|20)\d{2}\s*\)")),
    Exemption("link", "inside a URL or a Markdown link target", _span_rule(r"https?://\S+", r"\]\([^)]*\)")),
    Exemption("gpu-name", "inside a GPU's name as the evidence gives it ('NVIDIA GeForce RTX 3060 12 GB'): which "
              "card, not a figure", _inside_evidence_name),
    Exemption("quoted-rule", "inside a verbatim quotation of a recommendation rule's source (a rule_text in the "
              "evidence): the seed's words, quoted, not a claim about this model", _inside_quoted_rule),
)


def exemption_for(line: str, token: NumberToken, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> str | None:
    for rule in EXEMPTIONS:
        if rule.applies(line, token, quotes, names):
            return rule.id
    return None


def numbers_in_line(line: str, quotes: tuple[str, ...] = (), names: tuple[str, ...] = ()) -> list[tuple[NumberToken, str | None]]:
    """Every number in a line with the exemption that applies to it (None: it is a claim).

    A number without a unit directly followed by a range to a number with one inherits that unit:
    '5–10 %' is 5 % to 10 %; '1e-4 to 5e-4' has none.
    """
    tokens = [token for token in (_parse_token(m, line) for m in _NUMBER_RE.finditer(line)) if token is not None]
    for token, following in zip(tokens, tokens[1:]):
        between = line[token.end:following.start]
        if token.unit is None and following.unit is not None and _RANGE_RE.fullmatch(between):
            token.unit = following.unit
    return [(token, exemption_for(line, token, quotes, names)) for token in tokens]


# ---- evidence -------------------------------------------------------------------------------

# Keys whose values are not evidence, with the reason. Everything else in the JSON is.
NOT_EVIDENCE_KEYS: dict[str, str] = {
    "rule_text": "the quoted source of a recommendation rule: the seed's own example numbers "
                 "('typically ~10M params') are words, not measurements",
}


# A number written with a unit of bytes, FLOPs or time is grounded only by evidence of that kind, so
# "45 ms" is not grounded by some gradient norm that happens to be 0.045. The kind of an evidence
# value comes from its key, or the nearest enclosing key that has one (breakdown -> bytes).
UNIT_KINDS = {**{u: "bytes" for u in ("B", "bytes", "byte", "KB", "kB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB")},
              **{u: "flops" for u in UNITS if "FLOP" in u},
              **{u: "time" for u in ("ns", "us", "µs", "ms", "s", "sec", "seconds", "min", "minutes", "h", "hours", "hrs")}}
KEY_KINDS = (  # (kind, test on the key), first match wins
    ("rate", lambda key: key.endswith("per_s") or "per_second" in key),
    ("bytes", lambda key: "bytes" in key or key in ("breakdown", "per_gpu_breakdown", "breakdown_detail", "batch_estimates")),
    ("flops", lambda key: "flops" in key),
    ("time", lambda key: "seconds" in key or key.endswith("_s")),
)


def _key_kind(key: str, inherited: str | None) -> str | None:
    return next((kind for kind, test in KEY_KINDS if test(key.lower())), inherited)


@dataclass(frozen=True)
class EvidenceEntry:
    value: float
    path: str  # where in the JSON: memory.breakdown.activations, grads.global_grad_norms[2]
    kind: str | None  # bytes, flops, time, rate, or None when no key says


def evidence_entries(value: Any, root: str = "") -> list[EvidenceEntry]:
    """Every number in a JSON value with its path and kind: numeric leaves at any depth, and numbers
    written in strings (each unit reading applied: '51.6 MiB' gives 51.6 x 2**20). Booleans are not
    numbers; keys are not evidence, nor anything under a key in NOT_EVIDENCE_KEYS."""
    found: list[EvidenceEntry] = []
    stack: list[tuple[Any, str, str | None]] = [(value, root, None)]
    while stack:
        item, path, kind = stack.pop()
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, (int, float)):
            if math.isfinite(item):
                found.append(EvidenceEntry(float(item), path, kind))
        elif isinstance(item, str):
            for token, exempt in numbers_in_line(item):
                if exempt == "name":
                    continue
                token_kind = UNIT_KINDS.get(token.unit or "") or kind
                readings = [v for v, _ in token.candidates()] + [token.value] + [v for v, _ in token.parts]
                found.extend(EvidenceEntry(v, f"{path} ('{token.text}')", token_kind) for v in readings)
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k), _key_kind(str(k), kind))
                         for k, v in item.items() if k not in NOT_EVIDENCE_KEYS)
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", kind) for i, v in enumerate(item))
    return found


def evidence_values_by_kind(value: Any) -> dict[str, list[float]]:
    """Evidence values of a known kind (bytes, flops, time, rate), for numbers written with a unit."""
    found: dict[str, list[float]] = {}
    for entry in evidence_entries(value):
        if entry.kind:
            found.setdefault(entry.kind, []).append(entry.value)
    return found


def evidence_values(value: Any) -> list[float]:
    """Every number in a JSON value (see evidence_entries)."""
    return [entry.value for entry in evidence_entries(value)]


QUOTE_MIN_CHARS = 12  # a shorter code span ("`max_norm=1.0`") is a value, not a quotation


def evidence_strings(value: Any, root: str = "") -> list[tuple[str, str]]:
    """(path, text) of every string in the evidence, outside NOT_EVIDENCE_KEYS."""
    found: list[tuple[str, str]] = []
    stack: list[tuple[Any, str]] = [(value, root)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            found.append((path, item))
        elif isinstance(item, dict):
            stack.extend((v, f"{path}.{k}" if path else str(k)) for k, v in item.items() if k not in NOT_EVIDENCE_KEYS)
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(item))
    return sorted(found)


def quoted_rules(value: Any) -> list[str]:
    """The quoted parts ("...") of every rule_text in a JSON value: the seed's words a review may quote."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            text = item.get("rule_text")
            if isinstance(text, str):
                found.extend(part for part in text.split('"')[1::2] if part)
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def gpu_name_variants(name: str) -> list[str]:
    """A GPU's name and the shorter names it goes by: runs of its words that start with a word of
    letters and hold a number ('NVIDIA GeForce RTX 3060 12 GB' -> 'RTX 3060', 'GeForce RTX 3060 12 GB', ...)."""
    words = name.split()
    variants = {name}
    for i, first in enumerate(words):
        if first.isalnum() and not first.isalpha() and not first.isdigit():
            variants.add(first)  # 'A100', 'V100'
        if not first.isalpha() or first in UNITS:
            continue
        for j in range(i + 2, len(words) + 1):
            if any(any(ch.isdigit() for ch in w) for w in words[i:j]):
                variants.add(" ".join(words[i:j]))
    return sorted(variants)


class Evidence:
    """Sorted evidence values, searched by interval, each with where it came from; and the rule texts a
    review may quote. `values` are floats or EvidenceEntry; `by_kind` (floats by kind) turns on the
    unit-kind rule for floats given without entries."""

    def __init__(self, values: Iterable[float | EvidenceEntry], quotes: Iterable[str] = (),
                 by_kind: dict[str, Iterable[float]] | None = None, data: Any = None):
        self.data = data  # the evidence itself, for the vocabulary's [key=value] selectors and GPU sections
        self.strings = evidence_strings(data) if data is not None else []
        self.gpu_sections = vocabulary_module.gpu_sections(data) if data is not None else {}
        self.gpu_aliases = vocabulary_module.gpu_aliases(data) if data is not None else {}
        self.gpu_names = {gpu: sorted({v.lower() for name in names for v in gpu_name_variants(name)})
                          for gpu, names in self.gpu_aliases.items()}
        self.names = tuple(sorted({short for names in self.gpu_aliases.values() for name in names
                                   for short in gpu_name_variants(name)}, key=len, reverse=True))
        entries = [v if isinstance(v, EvidenceEntry) else EvidenceEntry(float(v), "", None) for v in values]
        if by_kind is not None:
            entries += [EvidenceEntry(float(v), "", kind) for kind, kind_values in by_kind.items() for v in kind_values]
        self.kinded = by_kind is not None or any(e.kind for e in entries)
        self.entries = sorted({(e.value, e.path): e for e in entries}.values(), key=lambda e: e.value)
        self.values = [e.value for e in self.entries]
        self.by_kind: dict[str, list[EvidenceEntry]] = {}
        for entry in self.entries:
            if entry.kind:
                self.by_kind.setdefault(entry.kind, []).append(entry)
        self.quotes = tuple(sorted(set(quotes), key=len, reverse=True))

    def match(self, value: float, tolerance: float, kind: str | None = None) -> EvidenceEntry | None:
        """The evidence entry a written value rounds to (of the given kind when the unit says one)."""
        entries = self.entries if kind is None or not self.kinded else self.by_kind.get(kind, [])
        values = self.values if entries is self.entries else [e.value for e in entries]
        slack = tolerance + 1e-9 * abs(value) + 1e-300
        low, high = bisect.bisect_left(values, value - slack), bisect.bisect_right(values, value + slack)
        if low >= high:
            return None
        # The most telling of the candidates: an exact value before a rounded one, a number before a
        # number quoted in a string, a short path before a long one.
        return min(entries[low:high], key=lambda e: (abs(e.value - value) > 1e-9 * max(abs(value), 1e-300),
                                                     "('" in e.path, e.path.count("."), len(e.path)))

    def candidates(self, token: NumberToken) -> list[EvidenceEntry]:
        """Every evidence entry the number rounds to (of its unit's kind), the most telling first."""
        kind = UNIT_KINDS.get(token.unit or "")
        entries = self.entries if kind is None or not self.kinded else self.by_kind.get(kind, [])
        values = self.values if entries is self.entries else [e.value for e in entries]
        found: dict[str, tuple[tuple, EvidenceEntry]] = {}
        for value, tolerance in token.candidates():
            slack = tolerance + 1e-9 * abs(value) + 1e-300
            low, high = bisect.bisect_left(values, value - slack), bisect.bisect_right(values, value + slack)
            for entry in entries[low:high]:
                rank = (abs(entry.value - value) > 1e-9 * max(abs(value), 1e-300), "('" in entry.path,
                        entry.path.count("."), len(entry.path), entry.path)
                if entry.path not in found or rank < found[entry.path][0]:
                    found[entry.path] = (rank, entry)
        return [entry for _, entry in sorted(found.values(), key=lambda pair: pair[0])]

    def quoting(self, line: str, token: NumberToken) -> str | None:
        """The evidence string a `code span` around the number quotes verbatim (QUOTE_MIN_CHARS or more), or None."""
        for match in re.finditer(r"`([^`]+)`", line):
            if match.start(1) <= token.start and token.end <= match.end(1) and len(match.group(1)) >= QUOTE_MIN_CHARS:
                path = next((path for path, text in self.strings if match.group(1) in text), None)
                if path is not None:
                    return path
        return None

    def contains(self, value: float, tolerance: float, kind: str | None = None) -> bool:
        return self.match(value, tolerance, kind) is not None

    def grounding(self, token: NumberToken) -> str | None:
        """Where the evidence has this number ('' for evidence given without paths), or None."""
        kind = UNIT_KINDS.get(token.unit or "")
        for v, t in token.candidates():
            entry = self.match(v, t, kind)
            if entry is not None:
                return entry.path
        # "32,200,512" is either a grouped number or a list of three; the list reading needs every part.
        if token.parts:
            paths = [self.match(v, t) for v, t in token.parts]
            if all(p is not None for p in paths):
                return " + ".join(p.path for p in paths)
        return None

    def grounds(self, token: NumberToken) -> bool:
        return self.grounding(token) is not None


# ---- the check ------------------------------------------------------------------------------

# What a failing number is: not in the evidence at all; in it only under another subject than the one
# the review puts it under; in prose whose words name no measured subject; or under a label the
# vocabulary does not know.
FAILURE_KINDS = ("ungrounded", "mismatch", "unsupported", "unlabelled")


@dataclass
class Finding:
    line_number: int
    number: str
    line: str
    kind: str = "ungrounded"
    message: str = ""
    subject: str | None = None  # the label or words the number was read under
    path: str | None = None  # where the evidence has the value (a mismatch: the unrelated path)
    expected_path: str | None = None  # where the evidence has the subject the review names


@dataclass
class GroundingResult:
    checked: int
    grounded: int
    exempt: dict[str, int]
    ungrounded: list[Finding]  # every failing number, whatever its kind
    matches: list[dict[str, Any]] = field(default_factory=list)  # each grounded number, its subject and path
    exempt_numbers: list[dict[str, Any]] = field(default_factory=list)  # each exempt number and its rule

    def as_json(self, review: str, evidence_files: list[str]) -> dict[str, Any]:
        return {"schema": SCHEMA, "review": review, "evidence": evidence_files,
                "numbers_checked": self.checked, "grounded": self.grounded,
                "exempt": self.exempt, "failures_by_kind": self.counts(),
                "ungrounded": [vars(f) for f in self.ungrounded], "grounded_numbers": self.matches,
                "exempt_numbers": self.exempt_numbers}

    def counts(self) -> dict[str, int]:
        return {kind: sum(1 for f in self.ungrounded if f.kind == kind) for kind in FAILURE_KINDS}


def check_text(review_text: str, evidence: Evidence, vocabulary: "Vocabulary | None" = None) -> GroundingResult:
    """Every number of the review, line by line: exempt (by which rule), grounded, or not. With a
    vocabulary, grounded means matched by evidence about the subject the review puts the number under."""
    checked = grounded = 0
    exempt: dict[str, int] = {}
    ungrounded: list[Finding] = []
    matches: list[dict[str, Any]] = []
    exempt_numbers: list[dict[str, Any]] = []
    infos = review_context.line_infos(review_text) if vocabulary is not None else None
    for line_number, line in enumerate(review_text.splitlines(), start=1):
        for token, rule in numbers_in_line(line, evidence.quotes, evidence.names):
            if rule is not None:
                exempt[rule] = exempt.get(rule, 0) + 1
                exempt_numbers.append({"line_number": line_number, "number": token.text.strip(), "rule": rule})
                continue
            checked += 1
            number = token.text.strip()
            if infos is None:
                path = evidence.grounding(token)
                if path is not None:
                    grounded += 1
                    matches.append({"line_number": line_number, "number": number, "evidence_path": path})
                else:
                    ungrounded.append(Finding(line_number, number, line.strip(), message=f"{number} is not in the evidence"))
                continue
            outcome = _judge(line, token, infos[line_number - 1], evidence, vocabulary)
            if isinstance(outcome, Finding):
                outcome.line_number, outcome.line = line_number, line.strip()
                ungrounded.append(outcome)
            else:
                grounded += 1
                matches.append({"line_number": line_number, "number": number, **outcome})
    return GroundingResult(checked, grounded, exempt, ungrounded, matches, exempt_numbers)


def _format_like(value: float, token: NumberToken) -> str:
    """An evidence value written in the number's own unit and precision (107.6 MiB for 112,876,032)."""
    multiplier = UNITS.get(token.unit or "", (1.0,))[0]
    scaled = value / multiplier
    decimals = max(0, -int(round(math.log10(token.place)))) if token.place < 1 else 0
    if re.search(r"\de", token.text.lower()) and not token.unit:
        mantissa = token.text.lower().split("e")[0]
        text = re.sub(r"e([-+])0*(\d)", r"e\1\2", f"{scaled:.{len(mantissa.partition('.')[2])}e}").replace("e+", "e")
    else:
        text = f"{scaled:,.{decimals}f}" if "," in token.text else f"{scaled:.{decimals}f}"
    return text + (f" {token.unit}" if token.unit else "")


def _gpu_of(path: str, sections: dict[str, str]) -> str | None:
    best = max((p for p in sections if path == p or path.startswith(p + ".") or path.startswith(p + "[")),
               key=len, default=None)
    return sections[best] if best is not None else None


def _expected(patterns: list[str], token: NumberToken, before: str, evidence: Evidence,
              by_words: bool = True, accept: Callable[[EvidenceEntry], bool] | None = None) -> EvidenceEntry | None:
    """The evidence value the subject names: of the number's kind, the one whose key the nearest word
    before the number names ('activations 46.7 MiB' -> ...breakdown.activations), else the first path listed."""
    kind = UNIT_KINDS.get(token.unit or "")
    regexes = [vocabulary_module.path_regex([p]) for p in patterns]
    ranked: list[tuple[int, str, set[str], EvidenceEntry]] = []
    for entry in evidence.entries:
        if "('" in entry.path or (kind is not None and evidence.kinded and entry.kind != kind):
            continue
        if accept is not None and not accept(entry):
            continue
        rank = next((i for i, regex in enumerate(regexes) if regex.match(entry.path)), None)
        if rank is not None:
            key = re.sub(r"\[\d+\]", "", entry.path).rsplit(".", 1)[-1].lower()
            ranked.append(((kind is None and _key_kind(key, None) is not None, rank), entry.path,
                           {w.rstrip("s") for w in key.split("_") if w}, entry))
    if not ranked:
        return None
    if token.unit is None and any(not item[0][0] for item in ranked):  # a bare number: not a key of bytes or seconds
        ranked = [item for item in ranked if not item[0][0]]
    for word in reversed([w.lower().rstrip("s") for w in re.findall(r"[A-Za-z]+", before)] if by_words else []):
        named = [item for item in ranked if word in item[2]]
        if named:
            return min(named, key=lambda item: item[:2])[3]
    return min(ranked, key=lambda item: item[:2])[3]


def _known_paths(vocabulary: "Vocabulary", evidence: Evidence) -> re.Pattern | None:
    """Every path some subject of the vocabulary names: a mismatch reports one of these first."""
    cache = evidence.__dict__.setdefault("_known_paths", {})
    if id(vocabulary) not in cache:
        cache[id(vocabulary)] = vocabulary_module.path_regex(
            [r for subject in vocabulary.subjects for p in subject.paths for r in vocabulary_module.resolve(p, evidence.data)])
    return cache[id(vocabulary)]


def _has_kind(subjects: list["vocabulary_module.Subject"], token: NumberToken, evidence: Evidence) -> bool:
    """Whether the subjects' paths hold any evidence of the kind the number's unit says (any, without one)."""
    kind = UNIT_KINDS.get(token.unit or "")
    if kind is None or not evidence.kinded:
        return True
    regex = vocabulary_module.path_regex([r for s in subjects for p in s.paths for r in vocabulary_module.resolve(p, evidence.data)])
    return regex is not None and any(regex.match(e.path) for e in evidence.by_kind.get(kind, []) if "('" not in e.path)


# ---- qualifiers: what a number is said to be measured at (batch, precision, world size) ------------

# A qualifier written next to a number; (name, regex whose group 1 is the value). A number inside a
# qualifier's own text ("batch 32") is not qualified by it.
QUALIFIER_PATTERNS: tuple[tuple[str, re.Pattern], ...] = (
    ("batch", re.compile(r"\bbatch(?:[ -]size)?(?:\s+of)?\s+(\d[\d,]*)\b", re.I)),
    ("precision", re.compile(r"(?<![\w-])((?:fp|bf|tf)(?:16|32)(?:-autocast)?)(?![\w-])", re.I)),
    ("world_size", re.compile(r"(?:\bworld[ -]size\s+(\d+)|\b(\d+)\s+(?:GPUs|ranks)\b)", re.I)),
)
# Words that name no evidence key however near a number they stand.
_KEY_STOPWORDS = {"the", "of", "by", "at", "per", "and", "for", "in", "on", "to", "a", "an", "is", "byte", "bytes",
                  "second", "seconds", "flop", "flops", "full", "size", "saved", "end", "forward", "backward"}


@dataclass(frozen=True)
class Qualifier:
    name: str
    value: str
    text: str  # as written ("batch 32")


def _qualifier_matches(text: str) -> list[tuple[int, int, Qualifier]]:
    found = []
    for name, regex in QUALIFIER_PATTERNS:
        for match in regex.finditer(text):
            value = next(g for g in match.groups() if g is not None)
            found.append((match.start(), match.end(), Qualifier(name, value.replace(",", "").lower(), match.group(0))))
    return found


def qualifiers_for(line: str, token: NumberToken, context: "review_context.NumberContext") -> dict[str, Qualifier]:
    """The qualifiers that apply to a number: in its clause the nearest of each kind (not the number's own), else
    the label's (its bold label, column header or block)."""
    clause_start = token.start - context.position if context.source not in ("column",) else None
    chosen: dict[str, tuple[int, Qualifier]] = {}
    if clause_start is not None and clause_start >= 0:
        clause = line[clause_start:clause_start + len(context.clause)]
        for start, end, qualifier in _qualifier_matches(clause):
            start, end = start + clause_start, end + clause_start
            if start <= token.start and token.end <= end:
                continue  # the number is the qualifier's own value
            distance = token.start - end if end <= token.start else start - token.end
            if qualifier.name not in chosen or distance < chosen[qualifier.name][0]:
                chosen[qualifier.name] = (distance, qualifier)
    result = {name: qualifier for name, (_, qualifier) in chosen.items()}
    if context.label:
        for _, _, qualifier in _qualifier_matches(context.label):
            if qualifier.name not in result and qualifier.text not in line[token.start:token.end + 1]:
                result[qualifier.name] = qualifier
    return result


def _section_of(path: str, data: Any) -> tuple[str, dict[str, Any] | None]:
    root = re.split(r"[.\[]", path, 1)[0]
    section = data.get(root) if isinstance(data, dict) else None
    return root, section if isinstance(section, dict) else None


def measured_at(path: str, data: Any) -> dict[str, str]:
    """What the evidence at PATH was measured at: its section's batch size, precision and world size, where
    the section states them (derived epoch figures: the epoch's batch; the summary: its batch)."""
    root, section = _section_of(path, data)
    if section is None:
        return {}
    key = vocabulary_module.bare_path(path).split(".")[1] if "." in path else ""
    at: dict[str, str] = {}
    if root == "summary":
        batch = section.get("batch")
    elif root == "derived":
        batch = section.get("epoch_batch_size") if key in ("epoch_seconds", "steps_per_epoch", "epoch_batch_size") else None
    else:
        batch = section.get("batch_size")
    if isinstance(batch, int) and not isinstance(batch, bool):
        at["batch"] = str(batch)
    precision = section.get("precision")
    if isinstance(precision, str):
        at["precision"] = precision.lower()
    if "peak_bytes" in section and root != "summary":  # a memory section: one process unless it says otherwise
        at["world_size"] = str(section.get("world_size") or 1)
    return at


def qualifier_conflict(path: str, qualifiers: dict[str, Qualifier], data: Any) -> tuple[Qualifier, str] | None:
    """The first written qualifier the evidence at PATH contradicts, with what the evidence was measured at."""
    if not qualifiers or "('" in path:  # a number written inside an evidence string carries that string's context
        return None
    at = measured_at(path, data)
    for name, qualifier in qualifiers.items():
        measured = at.get(name)
        if measured is None:
            continue
        if name == "precision":
            if not measured.startswith(qualifier.value.split("-")[0]):
                return qualifier, measured
        elif measured != qualifier.value:
            return qualifier, measured
    return None


def _key_words(path: str) -> set[str]:
    key = re.sub(r"\[\d+\]", "", vocabulary_module.bare_path(path)).rsplit(".", 1)[-1].lower()
    return {w.rstrip("s") for w in key.split("_") if w} - _KEY_STOPWORDS


def _named_key_words(line: str, token: NumberToken) -> set[str]:
    """The words right before a number, back to the previous number or separator: 'grads 1.8 MiB' -> {grad}."""
    left = line[:token.start]
    cut = max(left.rfind(ch) for ch in ",;:(")
    previous = max((m.end() for m in _NUMBER_RE.finditer(left)), default=0)
    words = re.findall(r"[A-Za-z]+", left[max(cut + 1, previous):])
    return {w.lower().rstrip("s") for w in words} - _KEY_STOPWORDS


def _judge(line: str, token: NumberToken, info: "review_context.LineInfo", evidence: Evidence,
           vocabulary: "Vocabulary") -> dict[str, Any] | Finding:
    """Grounded ({subject, evidence_path}) or a Finding, for one number read in its context."""
    number = token.text.strip()
    quoted = evidence.quoting(line, token)
    if quoted is not None:
        return {"subject": "quotation", "evidence_path": quoted}
    context = review_context.context_for(info, line, token.start, token.end)
    subject = vocabulary.for_label(context.label) if context.label else None
    where = {"label": f"on the '{context.label}' line", "column": f"in the '{context.label}' column",
             "block": f"under '{context.label}'", "heading": f"under '{context.label}'",
             "fence": f"in the '{context.label}' block"}.get(context.source, "in prose")
    if context.label and subject is None and context.source in ("label", "column", "block", "fence"):
        what = "table column" if context.source == "column" else "label"
        return Finding(0, number, "", kind="unlabelled", subject=context.label,
                       message=f"{number} sits under the {what} '{context.label}', which has no vocabulary entry: "
                               f"in an answer, write it as a sentence that names what the number is; in a template, "
                               f"add a [[subject]] with this label to {vocabulary.shown_source} (see CLAUDE.md)")
    patterns: list[str] = []
    named: list[str] = []
    if subject is None or subject.prose:
        groups = vocabulary.named_near(context.clause, context.position)
        # the nearest subjects measured in the number's kind ('takes 2.41 ms' skips a 'peak' named nearer);
        # the nearest group after it counts too ('1,000 steps of warmup')
        chosen = [group for group in groups if _has_kind(group, token, evidence)][:2]
        for group in chosen:
            for other in group:
                if other.name in named:
                    continue
                named.append(other.name)
                patterns.extend(other.paths)
    patterns += list(subject.paths) if subject else []
    candidates = evidence.candidates(token)
    known = _known_paths(vocabulary, evidence)
    candidates.sort(key=lambda entry: known is None or not known.match(vocabulary_module.bare_path(entry.path)))
    part_candidates: list[list[EvidenceEntry]] = []
    if token.parts and not candidates:
        part_tokens = [NumberToken(str(v), token.start, token.end, v, 2 * t, None) for v, t in token.parts]
        part_candidates = [evidence.candidates(t) for t in part_tokens]
    read_as = subject.name if subject else (", ".join(named) or None)
    if not patterns:
        elsewhere = f" (the value occurs only at {candidates[0].path}, an unrelated path)" if candidates else ""
        return Finding(0, number, "", kind="unsupported", subject=context.label or context.clause.strip(),
                       path=candidates[0].path if candidates else None,
                       message=f"{number} {where} is unsupported: its words name no subject the evidence measures{elsewhere}")
    cache = evidence.__dict__.setdefault("_resolved", {})
    if tuple(patterns) not in cache:
        resolved = [r for p in patterns for r in vocabulary_module.resolve(p, evidence.data)]
        cache[tuple(patterns)] = resolved, vocabulary_module.path_regex(resolved)
    resolved, regex = cache[tuple(patterns)]
    sections = evidence.gpu_sections
    lowered = line.lower()
    named_gpus = {gpu for gpu, names in evidence.gpu_names.items() if any(name in lowered for name in names)}

    qualifiers = qualifiers_for(line, token, context)
    # the value of a "batch N" written in the line is a batch size, the same on every card
    is_batch = any(q.name == "batch" and start <= token.start and token.end <= end
                   for start, end, q in _qualifier_matches(line))
    # A number with a unit whose own words name one of its subject's keys ('grads 1.8 MiB') is that key's value
    kind = UNIT_KINDS.get(token.unit or "")
    named_keys: set[str] = set()
    if kind is not None and regex is not None:
        words = _named_key_words(line, token)
        keyed = {w for e in evidence.by_kind.get(kind, []) if "('" not in e.path and regex.match(vocabulary_module.bare_path(e.path))
                 for w in _key_words(e.path)}
        named_keys = words & keyed

    def on_subject(entry: EvidenceEntry) -> bool:
        if regex is None or not all(regex.match(vocabulary_module.bare_path(p)) for p in entry.path.split(" + ")):
            return False
        if named_keys and not (_key_words(entry.path) & named_keys):
            return False
        gpu = _gpu_of(entry.path, sections)
        return not named_gpus or gpu is None or gpu in named_gpus or is_batch

    def about_subject(entry: EvidenceEntry) -> bool:
        return on_subject(entry) and (is_batch or not any(qualifier_conflict(p, qualifiers, evidence.data) for p in entry.path.split(" + ")))

    if part_candidates and all(part_candidates):  # "32,200,512" read as a list: each part by itself
        parts = [next((c for c in part if about_subject(c)), part[0]) for part in part_candidates]
        candidates = [EvidenceEntry(token.value, " + ".join(c.path for c in parts), None)]
    good = [entry for entry in candidates if about_subject(entry)]
    if good:
        return {"subject": read_as, "evidence_path": good[0].path}
    expected = _expected(resolved, token, context.before, evidence, by_words=not named,
                         accept=lambda entry: not qualifier_conflict(entry.path, qualifiers, evidence.data)
                         and (not named_keys or bool(_key_words(entry.path) & named_keys)))
    off_qualifier = [entry for entry in candidates if on_subject(entry)]
    if off_qualifier:  # the value is the subject's, but measured at another batch / precision / world size
        found = off_qualifier[0]
        qualifier, measured = qualifier_conflict(found.path, qualifiers, evidence.data)
        expected_text = (f"; at {qualifier.text}, {expected.path} is {_format_like(expected.value, token)}"
                         if expected and expected.path != found.path else "")
        return Finding(0, number, "", kind="mismatch", subject=read_as, path=found.path,
                       expected_path=expected.path if expected else None,
                       message=f"{number} {where} is {found.path}, measured at {qualifier.name.replace('_', ' ')} "
                               f"{measured}, but the text says {qualifier.text}{expected_text}")
    if candidates:
        found = candidates[0]
        expected_text = (f"; {expected.path} is {_format_like(expected.value, token)}"
                         if expected and expected.path != found.path else "")
        gpu = _gpu_of(found.path, sections)
        gpu_note = (f" (measured for {gpu}, but the line names {', '.join(sorted(named_gpus))})"
                    if named_gpus and gpu and gpu not in named_gpus else "")
        return Finding(0, number, "", kind="mismatch", subject=read_as, path=found.path,
                       expected_path=expected.path if expected else None,
                       message=f"{number} {where} is {found.path}{gpu_note}{expected_text}")
    expected_text = f"; {expected.path} is {_format_like(expected.value, token)}" if expected else ""
    return Finding(0, number, "", kind="ungrounded", subject=read_as, expected_path=expected.path if expected else None,
                   message=f"{number} {where} is not in the evidence{expected_text}")


def read_evidence_file(path: str) -> Any:
    if not os.path.isfile(path):
        raise UserError(f"evidence file '{path}' does not exist; pass the JSON written by a script's --json")
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except json.JSONDecodeError as error:
        raise UserError(f"evidence file '{path}' is not valid JSON ({error.msg} at line {error.lineno}); "
                        f"pass the output of a script's --json") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read evidence file '{path}': {error}") from None


def read_review(path: str) -> str:
    if not os.path.isfile(path):
        raise UserError(f"review file '{path}' does not exist")
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read review file '{path}': {error}") from None


def _root(data: Any, path: str, taken: set[str]) -> str:
    """Where one file's evidence sits when several are given: under its capability's name
    ('model-expert/memory/1' -> memory), so the vocabulary's paths read the same as in a report."""
    schema = data.get("schema") if isinstance(data, dict) else None
    name = schema.split("/")[1] if isinstance(schema, str) and schema.count("/") >= 2 else os.path.basename(path)
    root, suffix = name, 2
    while root in taken:
        root, suffix = f"{name}_{suffix}", suffix + 1
    taken.add(root)
    return root


def check_files(review_path: str, evidence_paths: list[str], vocabulary_path: str | None = None) -> GroundingResult:
    review = read_review(review_path)
    entries: list[EvidenceEntry] = []
    quotes: list[str] = []
    merged: dict[str, Any] = {}
    taken: set[str] = set()
    files = [(path, read_evidence_file(path)) for path in evidence_paths]
    for path, data in files:
        root = _root(data, path, taken) if len(files) > 1 else ""
        entries.extend(evidence_entries(data, root))
        quotes.extend(quoted_rules(data))
        if root:
            merged[root] = data
    vocabulary = vocabulary_module.load(vocabulary_path or vocabulary_module.DEFAULT_PATH)
    return check_text(review, Evidence(entries, quotes, data=merged if len(files) > 1 else files[0][1]), vocabulary)


def render_text(result: GroundingResult, review_path: str) -> str:
    lines = [f"{review_path}:{f.line_number}: {f.kind} {f.number}: {f.message}\n    {f.line}" for f in result.ungrounded]
    exempt = sum(result.exempt.values())
    exempt_text = ", ".join(f"{n} {rule}" for rule, n in sorted(result.exempt.items())) or "none"
    kinds = ", ".join(f"{n} {kind}" for kind, n in result.counts().items() if n)
    lines.append(f"{len(result.ungrounded)} of {result.checked} numbers fail in {review_path}"
                 f"{' (' + kinds + ')' if kinds else ''}; {result.grounded} grounded; {exempt} exempt: {exempt_text}")
    return "\n".join(lines)


def render_explain(result: GroundingResult, review_path: str) -> str:
    """Every number that was checked: the subject it was read as and the path that grounds it (or why not)."""
    rows = [(m["line_number"], f"{review_path}:{m['line_number']}: {m['number']} [{m.get('subject') or '-'}] "
                               f"<- {m['evidence_path'] or '(evidence)'}") for m in result.matches]
    rows += [(f.line_number, f"{review_path}:{f.line_number}: {f.number} [{f.subject or '-'}] {f.kind.upper()}: {f.message}")
             for f in result.ungrounded]
    rows += [(e["line_number"], f"{review_path}:{e['line_number']}: {e['number']} exempt ({e['rule']})")
             for e in result.exempt_numbers]
    return "".join(text + "\n" for _, text in sorted(rows, key=lambda row: row[0]))


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=prog, description="Check that every number in a review is matched by evidence about the same "
        "subject (the label, table column or words it sits under; allowing the rounding the text shows). "
        "Exit 0: all grounded; 1: some are not; 2: bad input.")
    parser.add_argument("review", metavar="REVIEW.md")
    parser.add_argument("evidence", metavar="EVIDENCE.json", nargs="+", help="JSON written by the scripts' --json")
    parser.add_argument("--explain", action="store_true",
                        help="list every number with the subject it was read as and the evidence path that grounds it")
    parser.add_argument("--vocabulary", metavar="FILE.toml", default=None,
                        help="which labels and words stand for which evidence paths (default: templates/analysis.vocabulary.toml)")
    add_output_options(parser)
    return parser


def main(argv: list[str] | None = None, prog: str = "check_grounding.py") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    result, code = call_reporting_errors(prog, args.debug,
                                         lambda: check_files(args.review, args.evidence, args.vocabulary))
    if result is None:
        return code
    if args.json:
        sys.stdout.write(to_json(result.as_json(args.review, args.evidence)))
    else:
        if args.explain:
            sys.stdout.write(render_explain(result, args.review))
        sys.stdout.write(render_text(result, args.review) + "\n")
    return 1 if result.ungrounded else 0
