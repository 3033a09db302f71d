"""What a number in a review is about: the label, table column or heading it sits under, and its words.

A line's own label is the bold phrase that starts it (`- **Training step peak**: 107.6 MiB`). A line
that is only a label (`**Inputs**:`), a heading, or a code fence's opening starts a block: the lines
after it without a label of their own sit under it, until the next such line (a blank line ends a
label's block; the heading's resumes). A table cell sits
under its column's header. The clause is the part of the line between `;`, `—` and sentence ends
around the number: the words prose is judged by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_MARKERS = r"^\s*(?:>\s*)*(?:[-*+]\s+(?:\[[ xX]\]\s+)?|\d+[.)]\s+)?"
_LABEL_RE = re.compile(_MARKERS + r"\*\*(?P<label>[^*]+?):?\*\*:?")
_LABEL_ONLY_RE = re.compile(_MARKERS + r"\*\*(?P<label>[^*]+?):?\*\*\s*(?:\([^)]*\))?\s*:?\s*$")
_HEADING_RE = re.compile(r"^\s{0,3}#{1,6}\s+(?P<heading>.+?)\s*#*\s*$")
_FENCE_RE = re.compile(r"^\s*(```+|~~~+)\s*(?P<lang>[\w-]*)")
_SEPARATOR_RE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_CLAUSE_BREAK_RE = re.compile(r";|—|–\s|(?<=[a-z\)\]`])\.\s+(?=[A-Z])|(?<=[a-z\)\]`])\.$")
_WORD_RE = re.compile(r"[A-Za-z][\w-]*")


@dataclass
class LineInfo:
    label: str | None  # the line's own label
    label_end: int  # where the label's text ends (numbers after it sit under it)
    block: str | None  # the label-only line, heading or code fence above
    block_source: str | None  # "block", "heading", "fence"
    headers: list[str] | None  # the column headers when the line is a table row
    is_heading: bool = False


@dataclass
class NumberContext:
    label: str | None
    source: str  # "label", "column", "block", "fence", "heading" or "none"
    clause: str  # the words of the number's clause
    before: str  # the few words right before the number
    position: int = 0  # where the number starts in the clause


def _cells(line: str) -> list[tuple[int, int, str]]:
    """(start, end, text) of each cell of a Markdown table row."""
    bars = [i for i, ch in enumerate(line) if ch == "|"]
    return [(a + 1, b, line[a + 1:b].strip()) for a, b in zip(bars, bars[1:])]


def line_infos(text: str) -> list[LineInfo]:
    lines = text.splitlines()
    infos: list[LineInfo] = []
    block: tuple[str | None, str | None] = (None, None)
    outside_fence = block
    fence: str | None = None
    headers: list[str] | None = None
    heading_block: tuple[str | None, str | None] = (None, None)
    for index, line in enumerate(lines):
        fence_match = _FENCE_RE.match(line)
        if fence is not None:
            if fence_match and line.strip().startswith(fence):
                fence, block = None, outside_fence
            infos.append(LineInfo(None, 0, *block, None))
            continue
        if fence_match:
            fence, outside_fence = fence_match.group(1), block
            block = ("```" + fence_match.group("lang"), "fence")
            infos.append(LineInfo(None, 0, *block, None))
            continue
        if line.lstrip().startswith("|"):
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if headers is None and _SEPARATOR_RE.match(following):
                headers = [cell for _, _, cell in _cells(line)]
                infos.append(LineInfo(None, 0, *block, None))
                continue
            infos.append(LineInfo(None, 0, *block, None if _SEPARATOR_RE.match(line) else headers))
            continue
        headers = None
        if not line.strip():  # a blank line ends a label's block: what follows sits under the heading
            block = heading_block
        heading = _HEADING_RE.match(line)
        if heading:
            block = heading_block = (heading.group("heading"), "heading")
            infos.append(LineInfo(None, 0, None, None, None, is_heading=True))
            continue
        only = _LABEL_ONLY_RE.match(line)
        if only:
            block = (only.group("label").strip(), "block")
            infos.append(LineInfo(block[0], only.end("label"), None, None, None))
            continue
        own = _LABEL_RE.match(line)
        infos.append(LineInfo(own.group("label").strip() if own else None, own.end("label") if own else 0,
                              *block, None))
    return infos


def _clause(line: str, start: int, end: int) -> tuple[str, int]:
    left = max((m.end() for m in _CLAUSE_BREAK_RE.finditer(line, 0, start)), default=0)
    right = next((m.start() for m in _CLAUSE_BREAK_RE.finditer(line, end)), len(line))
    return line[left:right], start - left


def context_for(info: LineInfo, line: str, start: int, end: int) -> NumberContext:
    """The subject a number at line[start:end] sits under, and its words."""
    clause, position = _clause(line, start, end)
    before = " ".join(_WORD_RE.findall(line[max(0, start - 40):start])[-4:])
    if info.headers is not None:
        for index, (cell_start, cell_end, _) in enumerate(_cells(line)):
            if cell_start <= start < cell_end:
                header = info.headers[index] if index < len(info.headers) else None
                cell = line[cell_start:cell_end]
                return NumberContext(header, "column", cell, before, start - cell_start)
    if info.label is not None:
        return NumberContext(info.label, "label", clause, before, position)
    if info.is_heading:
        return NumberContext(None, "none", clause, before, position)
    if info.block is not None:
        return NumberContext(info.block, info.block_source or "block", clause, before, position)
    return NumberContext(None, "none", clause, before, position)
