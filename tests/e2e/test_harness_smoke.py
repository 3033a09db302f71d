"""Smoke test of the e2e harness: the real Claude Code CLI, a scripted fake
Anthropic API, and a throw-away project with its own agent, slash command
and permission allow-list."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from claude_harness import claude_or_skip, run_scripted, write_project  # noqa: E402
from fake_anthropic import DELEGATION_TOOL_NAMES, DelegationScript  # noqa: E402

if shutil.which("node") is None or shutil.which("npm") is None:
    pytest.skip("node/npm not installed: cannot run the Claude Code CLI", allow_module_level=True)

AGENT_MARKER = "You are DEMO-AGENT-7f3a, a demo agent that runs python one-liners."
COMMAND_MARKER = "DEMO-COMMAND-51c9: delegate to the demo agent"

AGENT_MD = f"""---
name: demo
description: Demo agent that runs python one-liners and reports their output.
tools: Bash
---
{AGENT_MARKER}
Run each command you are given with the Bash tool and report the output verbatim.
"""

COMMAND_MD = f"""---
description: Run the demo agent
argument-hint: <label>
---
{COMMAND_MARKER} (subagent_type "demo") and have it run
`python -c "print(42)"` and `python -c "print(6*7+1)"`. Label: $ARGUMENTS
"""

# "Bash(<prefix> *)" is the current wildcard form; "Bash(<prefix>:*)" is the
# legacy prefix form (also accepted by 2.1.x).
SETTINGS = {"permissions": {"allow": ["Bash(python -c *)"]}}


@pytest.fixture
def project(tmp_path):
    return write_project(tmp_path / "proj", agents={"demo": AGENT_MD},
                         commands={"demo": COMMAND_MD}, settings=SETTINGS)


def _run(claude, project, tmp_path, commands):
    script = DelegationScript(agent="demo", agent_marker=AGENT_MARKER, commands=commands,
                              main_final="MAIN-FINAL", subagent_final="SUB-FINAL")
    run, api = run_scripted("/demo smoke-label", project, script, home=tmp_path / "home",
                            claude=claude, timeout=120)
    return run, api


@pytest.fixture(scope="module")
def claude():
    return claude_or_skip()


def test_slash_command_delegates_and_allowed_commands_run(claude, project, tmp_path):
    run, api = _run(claude, project, tmp_path,
                    ['python -c "print(42)"', 'python -c "print(6*7+1)"'])
    ctx = f"\n--- traffic ---\n{api.dump()}\n--- run ---\n{run.describe()}"
    run.check()
    assert run.result_text == "MAIN-FINAL", ctx
    assert not api.errors, ctx

    # the slash command was expanded into the main agent's first request
    main = api.message_requests("main")
    assert main, ctx
    first = main[0].first_user_text
    assert COMMAND_MARKER in first and "smoke-label" in first, ctx

    # the main agent delegated to the demo subagent (tool is "Agent" in 2.1.x, "Task" before)
    delegations = [c for c in api.tool_calls() if c.name in DELEGATION_TOOL_NAMES]
    assert len(delegations) == 1, ctx
    assert delegations[0].input["subagent_type"] == "demo"
    assert delegations[0].kind == "main"
    assert delegations[0].result and "SUB-FINAL" in delegations[0].result, ctx

    # the subagent really ran: its system prompt is the agent body, Bash is its only tool
    sub = api.message_requests("subagent")
    assert len(sub) == 3, ctx  # two commands + final answer
    assert sub[0].tool_names == ["Bash"], ctx

    # the commands ran for real, allowed by the project's settings
    bash = api.tool_calls("Bash")
    assert [c.result for c in bash] == ["42", "43"], ctx
    assert all(c.kind == "subagent" and not c.is_error and not c.denied for c in bash), ctx
    assert run.permission_denials == [], ctx
    assert run.duration < 90, ctx


def test_command_outside_allow_list_is_denied(claude, project, tmp_path):
    # same program, different arguments: "python -V" is not covered by "Bash(python -c *)"
    run, api = _run(claude, project, tmp_path, ['python -V', 'python -c "print(42)"'])
    ctx = f"\n--- traffic ---\n{api.dump()}\n--- run ---\n{run.describe()}"
    run.check()

    denied, allowed = api.tool_calls("Bash")
    assert denied.is_error and denied.denied, ctx
    assert "requires approval" in denied.result, ctx
    assert "Python 3" not in denied.result, ctx  # it did not run
    assert [d["tool_use_id"] for d in run.permission_denials] == [denied.id], ctx

    # the allow-list still lets the allowed command through in the same session
    assert allowed.result == "42" and not allowed.is_error, ctx


def test_allow_list_is_what_permits_the_command(claude, project, tmp_path):
    # without the project's settings.json the very same command is refused
    (project / ".claude" / "settings.json").unlink()
    run, api = _run(claude, project, tmp_path, ['python -c "print(42)"'])
    ctx = f"\n--- traffic ---\n{api.dump()}\n--- run ---\n{run.describe()}"
    run.check()
    [call] = api.tool_calls("Bash")
    assert call.denied and call.result != "42", ctx
    assert len(run.permission_denials) == 1, ctx
