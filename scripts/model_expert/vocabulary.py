"""Which words of a review stand for which evidence: the vocabulary check_grounding reads.

The vocabulary is data, `templates/analysis.vocabulary.toml`, kept beside the template that renders
the labels. Each `[[subject]]` names a thing the evidence measures:

- `labels`: the bold labels (`**Training step peak**:`), table column headers and headings the review
  renders for it; case-insensitive, `*` matches any text ("Largest batch that fits *").
- `paths`: the evidence paths that measure it, most telling first (`memory.peak_bytes`); `*` matches one
  key or index, `[key=value,...]` picks the list items whose fields say so
  (`recommend.recommendations[setting=memory_fit,role=cluster]`). A path covers everything under it.
- `words`: phrases that name it in prose ("learning rate", "per sample"); plural forms match too.
- `prose = true`: the label's text is free prose (a finding's Current State): what grounds a number
  there is the subject its own words name, plus the label's `paths`.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "analysis.vocabulary.toml")
_SELECTOR_RE = re.compile(r"\[(\w+=[^\]]*)\]")
_STRING_SUFFIX_RE = re.compile(r" \('.*'\)$")


@dataclass(frozen=True)
class Subject:
    name: str
    labels: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    words: tuple[str, ...] = ()
    prose: bool = False
    word_patterns: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)
    label_patterns: tuple[re.Pattern, ...] = field(default=(), compare=False, repr=False)

    def has_label(self, label: str) -> bool:
        text = normalise_label(label)
        return any(pattern.fullmatch(text) for pattern in self.label_patterns)

    def named_in(self, words: str) -> bool:
        return any(pattern.search(words) for pattern in self.word_patterns)


def normalise_label(label: str) -> str:
    return " ".join(label.strip().rstrip(":").split()).lower()


def _word_pattern(phrase: str) -> re.Pattern:
    parts = [re.escape(p) for p in phrase.lower().split()]
    return re.compile(r"(?<![\w])" + r"\s+".join(parts) + r"(?:s|es)?(?![\w])", re.IGNORECASE)


class Vocabulary:
    def __init__(self, subjects: list[Subject], source: str = "<vocabulary>"):
        self.subjects = subjects
        self.source = source
        self.shown_source = "templates/analysis.vocabulary.toml" if source == DEFAULT_PATH else source

    def for_label(self, label: str) -> Subject | None:
        return next((s for s in self.subjects if s.has_label(label)), None)

    def named_by(self, words: str) -> list[Subject]:
        return [s for s in self.subjects if s.named_in(words)]

    def named_near(self, clause: str, position: int) -> list[list[Subject]]:
        """The subjects prose names for a number at clause[position], nearest first: those named just
        before it ('betas (0.9, 0.999)' -> adam hyperparameters), then the first named after it
        ('3,488,000 parameters'), then the ones named further before. Subjects whose names end (or
        start) at the same place form one group."""
        before: dict[int, list[Subject]] = {}
        after: dict[int, list[Subject]] = {}
        for subject in self.subjects:
            for pattern in subject.word_patterns:
                for match in pattern.finditer(clause):
                    if match.end() <= position:
                        before.setdefault(match.end(), []).append(subject)
                    elif match.start() >= position:
                        after.setdefault(match.start(), []).append(subject)
        ordered = [before[end] for end in sorted(before, reverse=True)]
        if after:
            ordered.insert(1 if ordered else 0, after[min(after)])
        return [list(dict.fromkeys(group)) for group in ordered]


def load(path: str = DEFAULT_PATH) -> Vocabulary:
    try:
        with open(path, "rb") as stream:
            data = tomllib.load(stream)
    except FileNotFoundError:
        raise UserError(f"vocabulary file '{path}' does not exist; pass --vocabulary FILE.toml") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"vocabulary file '{path}' is not valid TOML ({error})") from None
    subjects = []
    for index, item in enumerate(data.get("subject", [])):
        unknown = set(item) - {"name", "labels", "paths", "words", "prose"}
        if unknown or not (item.get("labels") or item.get("words")):
            raise UserError(f"vocabulary '{path}' subject {index}: needs labels or words, and only "
                            f"name/labels/paths/words/prose (found {sorted(unknown) or 'neither'})")
        words = tuple(item.get("words", ()))
        subjects.append(Subject(name=item.get("name", (item.get("labels") or words)[0]),
                                labels=tuple(item.get("labels", ())), paths=tuple(item.get("paths", ())),
                                words=words, prose=bool(item.get("prose", False)),
                                word_patterns=tuple(_word_pattern(w) for w in words),
                                label_patterns=tuple(re.compile(re.escape(normalise_label(p)).replace(r"\*", ".*"))
                                                     for p in item.get("labels", ()))))
    return Vocabulary(subjects, path)


# ---- paths ----------------------------------------------------------------------------------

def _lookup(data: Any, path: str) -> Any:
    """The value at a concrete dotted path ('recommend.recommendations'), or None."""
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            data = data[index] if isinstance(data, list) and index < len(data) else None
        else:
            data = data.get(part) if isinstance(data, dict) else None
        if data is None:
            return None
    return data


def resolve(pattern: str, data: Any) -> list[str]:
    """A path pattern with its [key=value] selectors replaced by the indices of the items they pick."""
    match = _SELECTOR_RE.search(pattern)
    if not match:
        return [pattern]
    prefix, rest = pattern[:match.start()], pattern[match.end():]
    items = _lookup(data, prefix)
    if not isinstance(items, list):
        return []
    wanted = dict(part.split("=", 1) for part in match.group(1).split(","))
    picked = [i for i, item in enumerate(items) if isinstance(item, dict)
              and all(str(item.get(key)).lower() == value.lower() for key, value in wanted.items())]
    return [resolved for i in picked for resolved in resolve(f"{prefix}[{i}]{rest}", data)]


def path_regex(patterns: list[str]) -> re.Pattern | None:
    """One regex that matches an evidence path lying under any of the (resolved) patterns."""
    if not patterns:
        return None
    alternatives = [re.escape(p).replace(r"\*", r"[^.\[\]]*") for p in patterns]
    return re.compile(r"^(?:" + "|".join(alternatives) + r")(?:[.\[].*)?$")


def bare_path(path: str) -> str:
    """An evidence path without the quoted number of a string ("x.text ('6083')" -> "x.text")."""
    return _STRING_SUFFIX_RE.sub("", path)


# ---- which GPU a section of the evidence was measured for ------------------------------------

def gpu_sections(data: Any, path: str = "") -> dict[str, str]:
    """{path of a section: the GPU it was measured for}, for every dict with a `gpu` field."""
    found: dict[str, str] = {}
    if isinstance(data, dict):
        gpu = data.get("gpu")
        name = gpu.get("name") if isinstance(gpu, dict) else gpu
        if isinstance(name, str) and name:
            found[path] = name
        for key, value in data.items():
            found.update(gpu_sections(value, f"{path}.{key}" if path else str(key)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.update(gpu_sections(value, f"{path}[{index}]"))
    return found


def gpu_aliases(data: Any) -> dict[str, set[str]]:
    """{GPU id: the names the evidence gives it} ('rtx3060-12gb' and 'NVIDIA GeForce RTX 3060 12 GB'):
    a dict whose `gpu` is an id, or is {name, description}, and that has a `description` beside it."""
    aliases: dict[str, set[str]] = {gpu: {gpu} for gpu in gpu_sections(data).values()}
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            gpu, description = item.get("gpu"), item.get("description")
            if isinstance(gpu, dict):
                gpu, description = gpu.get("name"), gpu.get("description")
            if isinstance(gpu, str) and gpu in aliases and isinstance(description, str) and description:
                aliases[gpu].add(description)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return aliases
