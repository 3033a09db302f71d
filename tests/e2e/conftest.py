"""The real Claude Code client, found or installed once per test module (claude_harness.find_claude)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claude_harness import ClaudeInstallError, ClaudeUnavailable, find_claude  # noqa: E402


@pytest.fixture(scope="module")
def claude():
    try:
        return find_claude()
    except ClaudeUnavailable as error:  # pragma: no cover
        pytest.skip(str(error))
    except ClaudeInstallError as error:
        pytest.fail(f"could not install the Claude Code CLI with npm:\n{error}", pytrace=False)
