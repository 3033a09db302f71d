"""The agent, the slash command and the settings: frontmatter, validation, and every documented command runs."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

CLAUDE = REPO / ".claude"
AGENT = CLAUDE / "agents" / "model-expert.md"
COMMAND = CLAUDE / "commands" / "review-model.md"
FENCED = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)
SAMPLE_FINDINGS = [{"priority": 1, "title": "Padding mask", "current_state": "padding positions are masked",
                    "impact": "none", "fix": "keep the mask", "evidence": "trace.inputs"}]


def frontmatter(path: Path) -> tuple[dict, str]:
    text = path.read_text()
    assert text.startswith("---\n"), f"{path} has no frontmatter"
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


def documented_commands() -> list[str]:
    """Every `python scripts/...` line inside a fenced block of any .claude/**/*.md, in file order."""
    commands = []
    for path in sorted(CLAUDE.rglob("*.md")):
        for block in FENCED.findall(path.read_text()):
            commands += [line.strip() for line in block.splitlines() if line.strip().startswith("python scripts/")]
    return commands


def test_agent_frontmatter():
    meta, body = frontmatter(AGENT)
    assert meta["name"] == "model-expert"
    assert "Use it when" in meta["description"] and "Examples" in meta["description"]
    tools = {t.strip() for t in meta["tools"].split(",")}
    assert {"Bash", "Read", "Grep", "Glob"} <= tools
    assert meta["model"] in {"haiku", "sonnet", "opus", "inherit"}
    assert meta["color"] in {"red", "blue", "green", "yellow", "purple", "orange", "pink", "cyan"}
    assert "not measured" in body and "check_grounding.py" in body
    assert len(body.splitlines()) < 120, "keep the agent lean enough to read in one sitting"


def test_command_frontmatter_and_arguments():
    meta, body = frontmatter(COMMAND)
    assert meta["description"] and meta["argument-hint"].startswith("TARGET")
    assert "$ARGUMENTS" in body and "model-expert" in body


def test_settings_allow_exactly_the_scripts():
    settings = json.loads((CLAUDE / "settings.json").read_text())
    assert settings["permissions"]["allow"] == ["Bash(python scripts/*)"]


def test_every_command_uses_the_allowed_prefix():
    commands = documented_commands()
    assert len(commands) >= 10
    for path in CLAUDE.rglob("*.md"):
        for block in FENCED.findall(path.read_text()):
            for line in filter(str.strip, block.splitlines()):
                assert line.strip().startswith("python scripts/"), f"{path}: '{line}' would not be allowed"


def copy_of_repo(destination: Path) -> Path:
    ignore = shutil.ignore_patterns(".git", ".node", "__pycache__", "review", "base", ".pytest_cache", "*.egg-info")
    shutil.copytree(REPO, destination, symlinks=True, ignore=ignore)
    return destination


def agent_answer(review: Path) -> str:
    """The review plus first actions as the agent writes them, each number named by what it is."""
    evidence = json.loads((review / "analysis.json").read_text())
    start = re.search(r"\(start at (\S+)\)", (review / "analysis.md").read_text()).group(1)
    return ((review / "analysis.md").read_text() + "\n### First actions\n"
            f"1. Start at a learning rate of {start}.\n"
            f"2. The largest batch that fits the {evidence['memory']['gpu']} is {evidence['memory']['max_batch_size']}.\n")


def test_every_documented_command_runs(tmp_path):
    work = copy_of_repo(tmp_path / "repo")
    for command in documented_commands():
        if "--findings review/findings.json" in command:  # step 4: the agent writes its findings first
            (work / "review" / "findings.json").write_text(json.dumps(SAMPLE_FINDINGS))
        if command.startswith("python scripts/check_grounding.py review/answer.md"):  # step 7: the agent's answer
            (work / "review" / "answer.md").write_text(agent_answer(work / "review"))
        if command.startswith("python scripts/compare.py base/"):  # the base review, made the same way
            shutil.copytree(work / "review", work / "base")
        argv = shlex.split(command)
        result = subprocess.run([sys.executable, *argv[1:]], cwd=work, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stderr[-2000:]}"
    assert (work / "review" / "analysis.md").exists() and (work / "review" / "analysis.json").exists()
    assert "Padding mask" in (work / "review" / "analysis.md").read_text()
    assert any(c.startswith("python scripts/check_grounding.py review/answer.md") for c in documented_commands())


def test_plugin_validate_strict():
    sys.path.insert(0, str(REPO / "tests" / "e2e"))
    from claude_harness import ClaudeUnavailable, find_claude
    try:
        claude = find_claude()
    except ClaudeUnavailable as error:
        pytest.skip(str(error))
    result = subprocess.run([*claude, "plugin", "validate", "--strict", str(CLAUDE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation passed" in result.stdout and "warning" not in result.stdout.lower()


def test_init_installs_into_another_repository(tmp_path):
    target = tmp_path / "their-repo"
    (target / ".claude").mkdir(parents=True)
    (target / ".claude" / "settings.json").write_text(json.dumps({"permissions": {"allow": ["Bash(make *)"]}, "env": {"A": "1"}}))
    result = subprocess.run([sys.executable, "-m", "model_expert", "init", str(target)], cwd=REPO / "scripts",
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    settings = json.loads((target / ".claude" / "settings.json").read_text())
    assert settings == {"permissions": {"allow": ["Bash(make *)", "Bash(model-expert *)"]}, "env": {"A": "1"}}
    agent = (target / ".claude" / "agents" / "model-expert.md").read_text()
    assert "python scripts/" not in agent and "model-expert report TARGET --config FILE.ini:SECTION" in agent
    # the installed agent is generic: no file of this repository's example project, no project of ours
    for word in ("examples/", "SimilarityTransformer", "Anvil", "CLIP", "seed"):
        assert word not in agent, word
    named = set(re.findall(r"[\w./-]+\.(?:py|ini|toml|json|md|sh)\b", agent))
    outputs = {n for n in named if n.startswith(("review/", "base/"))}   # what the commands write
    placeholders = {n for n in named if n.split("/")[-1] in ("FILE.py", "FILE.ini", "file.py")}
    assert named - outputs - placeholders == {"model-expert.toml"}, named - outputs - placeholders
    assert (target / "model-expert.toml").exists()                   # ... and init wrote it
    profile = (target / "model-expert.toml").read_text()
    assert all(line.startswith("#") or not line.strip() for line in profile.splitlines())   # a commented template
    sys.path.insert(0, str(REPO / "scripts"))
    from model_expert import profile as project_profile
    uncommented = "\n".join(line[2:] if line.startswith("# ") and "=" in line or line.startswith("#     ")
                            or line.startswith("# ]") or line.startswith("# [models") else line
                            for line in profile.splitlines())
    (tmp_path / "filled").mkdir()
    (tmp_path / "filled" / "model-expert.toml").write_text(uncommented)
    path, table = project_profile.find(str(tmp_path / "filled"))     # every key of the template is a known key
    assert table["gpus_per_node"] == 4 and table["models"]["path/to/model.py:ModelClass"]["set"] == ["num_items"]
    # a second run is a no-op; a changed agent file is not overwritten without --force
    again = subprocess.run([sys.executable, "-m", "model_expert", "init", str(target)], cwd=REPO / "scripts",
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    (target / ".claude" / "agents" / "model-expert.md").write_text("mine")
    refused = subprocess.run([sys.executable, "-m", "model_expert", "init", str(target)], cwd=REPO / "scripts",
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (target / ".claude" / "agents" / "model-expert.md").read_text() == "mine"
    (target / "model-expert.toml").write_text("gpu = \"a100-80gb\"\n")   # the user's profile is never replaced
    forced = subprocess.run([sys.executable, "-m", "model_expert", "init", str(target), "--force"], cwd=REPO / "scripts",
                            capture_output=True, text=True, timeout=120)
    assert forced.returncode == 0 and (target / "model-expert.toml").read_text() == "gpu = \"a100-80gb\"\n"


def test_profile_fills_unset_options_and_the_command_line_wins(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "scripts"))
    from model_expert import profile as project_profile, report
    (tmp_path / "pyproject.toml").write_text('[tool.model-expert]\ngpu = "a100-80gb"\n'
                                             '[tool.model-expert.models."m.py:M"]\nloss = "l.py:f"\nset = ["T"]\n')
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")                              # found from a subdirectory, as ruff finds its own
    parser = report.CAPABILITY.parser()
    args = parser.parse_args(["m.py:M", "--out", "o", "--set", "U"])
    info = project_profile.apply(args, parser)
    assert info["path"].endswith("pyproject.toml [tool.model-expert]")
    assert (args.loss, args.set, args.gpu) == ("l.py:f", ["U"], "a100-80gb")   # --set given: kept
    assert info["applied"] == {"loss": "l.py:f", "gpu": "a100-80gb"}
    (tmp_path / "model-expert.toml").write_text('gpus = 4\n')
    with pytest.raises(Exception, match="unknown key 'gpus'"):
        project_profile.find()
