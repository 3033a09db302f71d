"""mermaid's own parser in node, installed once with npm into a cache outside the repository.

`python tests/mermaid_check.py --install` is what .ci/run calls; the tests call `parse(blocks)`.
Cache: $MODEL_EXPERT_MERMAID_CACHE, else ~/.cache/model-expert/mermaid-<version>.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MERMAID_VERSION = "11.17.2"
JSDOM_VERSION = "29.1.1"  # mermaid.parse sanitises with DOMPurify, which needs a DOM
HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("MODEL_EXPERT_MERMAID_CACHE")
             or Path.home() / ".cache" / "model-expert" / f"mermaid-{MERMAID_VERSION}")
BLOCK_RE = re.compile(r"```mermaid\n(.*?)```", re.DOTALL)


class MermaidUnavailable(RuntimeError):
    """node/npm missing or the install failed: the test fails (it never skips)."""


def blocks(markdown: str) -> list[str]:
    """The text of every ```mermaid block in MARKDOWN."""
    return BLOCK_RE.findall(markdown)


def install(cache: Path = CACHE) -> Path:
    if (cache / "node_modules" / "mermaid" / "package.json").exists() and (cache / "node_modules" / "jsdom").exists():
        return cache
    if not shutil.which("node") or not shutil.which("npm"):
        raise MermaidUnavailable("node and npm are needed to parse mermaid blocks with mermaid's own parser")
    cache.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["npm", "install", "--prefix", str(cache), "--no-audit", "--no-fund", "--loglevel=error",
                             f"mermaid@{MERMAID_VERSION}", f"jsdom@{JSDOM_VERSION}"],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise MermaidUnavailable(f"npm install mermaid failed: {result.stderr[-1500:]}")
    return cache


def parse(diagrams: list[str], cache: Path = CACHE) -> list[str | None]:
    """None for each diagram mermaid parses, else its parse error."""
    cache = install(cache)
    shutil.copy(HERE / "mermaid_parse.mjs", cache / "mermaid_parse.mjs")
    result = subprocess.run(["node", "mermaid_parse.mjs"], cwd=cache, input=json.dumps(diagrams),
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise MermaidUnavailable(f"node mermaid_parse.mjs failed: {result.stderr[-1500:]}")
    return json.loads(result.stdout)


if __name__ == "__main__":
    if "--install" in sys.argv:
        print(install())
