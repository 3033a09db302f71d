"""/review-model end to end: the real Claude Code client, our .claude files, a scripted API stand-in.

The stand-in plays the model: the main agent delegates to model-expert (the Agent tool), and the
subagent runs the agent's documented commands through Claude Code's own Bash tool. Claude Code
decides under the project's .claude/settings.json whether each may run; every one must run and
succeed, and none may be denied.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claude_harness import claude_or_skip, run_scripted  # noqa: E402
from fake_anthropic import DELEGATION_TOOL_NAMES, DelegationScript  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
AGENT_BODY = (REPO / ".claude" / "agents" / "model-expert.md").read_text().split("\n---\n", 1)[1]
AGENT_MARKER = next(line for line in AGENT_BODY.splitlines() if line.startswith("You are model-expert"))
COMMAND_BODY = (REPO / ".claude" / "commands" / "review-model.md").read_text().split("\n---\n", 1)[1]
COMMAND_MARKER = COMMAND_BODY.strip().splitlines()[0].split("`")[0].strip()
TARGET = ("examples/similarity_transformer.py:SimilarityTransformer --config examples/config.ini:similarity_transformer "
          "--loss examples/ranking_loss.py:ranking_loss")

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node/npm not installed: cannot run the Claude Code CLI", allow_module_level=True)


def agent_commands() -> list[str]:
    """The agent's procedure as written: the report, the grounding check, and the focused scripts."""
    blocks = re.findall(r"```(?:bash)?\n(.*?)```", AGENT_BODY, re.S)
    commands = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    keep = [c for c in commands if "--findings" not in c and "compare.py" not in c
            and "review/answer.md" not in c]  # those need the agent's own files
    assert any(c.startswith("python scripts/report.py") for c in keep)
    return keep


@pytest.fixture(scope="module")
def claude():
    return claude_or_skip()


def test_review_model_delegates_and_runs_every_documented_command(claude, tmp_path):
    project = tmp_path / "repo"
    shutil.copytree(REPO, project, symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".node", "__pycache__", "review", ".pytest_cache", "*.egg-info"))
    commands = agent_commands()
    script = DelegationScript(agent="model-expert", agent_marker=AGENT_MARKER,
                              commands=[{"command": c, "timeout": 600000} for c in commands],
                              main_final="REVIEW DELIVERED", subagent_final="REVIEW WRITTEN")
    run, api = run_scripted(f"/review-model {TARGET}", project, script, home=tmp_path / "home", claude=claude,
                            timeout=900, server_lifetime=900)
    context = f"\n--- traffic ---\n{api.dump()[-6000:]}\n--- run ---\n{run.describe()[-3000:]}"
    run.check()
    assert run.result_text == "REVIEW DELIVERED", context

    # the slash command expanded, with the user's arguments, into the main agent's first request
    first = api.message_requests("main")[0].first_user_text
    assert COMMAND_MARKER in first and "examples/config.ini:similarity_transformer" in first, context

    # the main agent delegated to model-expert through the Agent tool
    delegations = [c for c in api.tool_calls() if c.name in DELEGATION_TOOL_NAMES]
    assert [d.input["subagent_type"] for d in delegations] == ["model-expert"], context

    # the subagent ran every documented command through Claude Code's Bash tool: allowed, and successful
    bash = api.tool_calls("Bash")
    assert [c.input["command"] for c in bash] == commands, context
    for call in bash:
        assert call.kind == "subagent" and not call.denied and not call.is_error, f"{call.input['command']}\n{call.result}"
    assert run.permission_denials == [], context

    # what the commands did is real: the review exists, is grounded, and says what the scripts measured
    evidence = json.loads((project / "review" / "analysis.json").read_text())
    assert evidence["params"]["total"] == 3_488_000
    grounding = next(c for c in bash if "check_grounding.py" in c.input["command"])
    assert "0 of " in grounding.result and "numbers fail" in grounding.result, grounding.result
