"""compare: deltas between two evidence files, 'not measured' for missing sections, one-line errors."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert import compare as compare_module  # noqa: E402
from model_expert.compare import compare, load_sections  # noqa: E402
from model_expert.errors import UserError  # noqa: E402

GRAD_FINDING_DEAD = {"severity": "warning", "kind": "dead_relu", "where": "encoder.fc1",
                     "message": "62 % of units never active", "value": 0.62}
GRAD_FINDING_VANISH = {"severity": "critical", "kind": "vanishing", "where": "decoder.fc3",
                       "message": "grad norm 1e-9", "value": 1e-9}
LINT_ITEM = {"rule": "item-in-forward", "severity": "warning", "file": "model.py", "line": 40,
             "code": "x.item()", "message": ".item() breaks the graph", "fix": "keep it a tensor"}
LINT_INPLACE = {"rule": "inplace-leaf", "severity": "error", "file": "model.py", "line": 12,
                "code": "w += 1", "message": "in-place op on a leaf", "fix": "w = w + 1"}

BASE = {"schema": "model-expert/report/1",
        "params": {"schema": "model-expert/params/1", "total": 13_529_600, "trainable": 13_529_600},
        "memory": {"schema": "model-expert/memory/1", "peak_bytes": 400_000_000, "inference_peak_bytes": 100_000_000},
        "grads": {"schema": "model-expert/grads/1", "stability": "CAUTION",
                  "findings": [GRAD_FINDING_DEAD, GRAD_FINDING_VANISH]},
        "lint": {"schema": "model-expert/lint/1", "findings": [LINT_ITEM]}}
HEAD = {"schema": "model-expert/report/1",
        "params": {"schema": "model-expert/params/1", "total": 14_579_200, "trainable": 13_529_600},
        "memory": {"schema": "model-expert/memory/1", "peak_bytes": 300_000_000, "inference_peak_bytes": 100_000_000},
        "flops": {"schema": "model-expert/flops/1", "forward_flops": 2_000_000_000, "backward_flops": 4_000_000_000,
                  "estimated_step_seconds": 0.0125},
        "grads": {"schema": "model-expert/grads/1", "stability": "STABLE", "findings": [GRAD_FINDING_DEAD]},
        "lint": {"schema": "model-expert/lint/1", "findings": [dict(LINT_ITEM, line=44), LINT_INPLACE]}}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return str(path)


def _rows(result):
    return {row["key"]: row for row in result["metrics"]}


def test_deltas_are_exact(tmp_path):
    result = compare(load_sections(_write(tmp_path, "b.json", BASE)), load_sections(_write(tmp_path, "h.json", HEAD)))
    rows = _rows(result)
    # 14,579,600 - 13,529,600 = 1,049,600 (one more 1024x1024 Linear + bias = 1,049,600); / 13,529,600
    assert rows["total"]["delta"] == 1_049_600
    assert rows["total"]["relative_delta"] == pytest.approx(1_049_600 / 13_529_600)
    assert rows["trainable"]["delta"] == 0 and rows["trainable"]["relative_delta"] == 0.0
    # 300 MB - 400 MB = -100 MB = -25 %
    assert rows["peak_bytes"]["delta"] == -100_000_000 and rows["peak_bytes"]["relative_delta"] == -0.25
    assert rows["inference_peak_bytes"]["delta"] == 0


def test_missing_sections_are_not_measured(tmp_path):
    result = compare(load_sections(_write(tmp_path, "b.json", BASE)), load_sections(_write(tmp_path, "h.json", HEAD)))
    flops = _rows(result)["forward_flops"]
    assert flops["base"] is None and flops["head"] == 2_000_000_000 and flops["delta"] is None
    text = compare_module.render_markdown(result, "b.json", "h.json")
    forward_line = next(line for line in text.splitlines() if line.startswith("| Forward FLOPs"))
    assert [cell.strip() for cell in forward_line.strip("|").split("|")] == \
        ["Forward FLOPs", "not measured", "2.00 GFLOP", "—", "—"]


def test_findings_added_and_removed_ignore_moved_lines(tmp_path):
    result = compare(load_sections(_write(tmp_path, "b.json", BASE)), load_sections(_write(tmp_path, "h.json", HEAD)))
    grads, lint = result["findings"]["grads"], result["findings"]["lint"]
    assert [f["kind"] for f in grads["added"]] == [] and [f["kind"] for f in grads["removed"]] == ["vanishing"]
    # the .item() finding moved from line 40 to 44: the same finding, not added+removed
    assert [f["rule"] for f in lint["added"]] == ["inplace-leaf"] and lint["removed"] == []
    assert result["grad_stability"] == {"base": "CAUTION", "head": "STABLE"}
    text = compare_module.render_markdown(result, "b", "h")
    assert "| Lint findings" in text and "+1 / -0" in text
    assert "- removed: [critical] vanishing at decoder.fc3: grad norm 1e-9" in text


def test_single_capability_files_fill_their_section(tmp_path):
    base = _write(tmp_path, "p1.json", {"schema": "model-expert/params/1", "total": 100, "trainable": 80})
    head = _write(tmp_path, "p2.json", {"schema": "model-expert/params/1", "total": 150, "trainable": 80})
    result = compare(load_sections(base), load_sections(head))
    rows = _rows(result)
    assert rows["total"]["delta"] == 50 and rows["total"]["relative_delta"] == 0.5  # 50 / 100
    assert rows["peak_bytes"]["base"] is None and result["findings"]["grads"] is None
    assert result["grad_stability"] == {"base": None, "head": None}


def test_growth_from_zero_has_no_ratio(tmp_path):
    base = _write(tmp_path, "a.json", {"schema": "model-expert/params/1", "total": 0, "trainable": 0})
    head = _write(tmp_path, "b.json", {"schema": "model-expert/params/1", "total": 10, "trainable": 0})
    rows = _rows(compare(load_sections(base), load_sections(head)))
    assert rows["total"]["delta"] == 10 and rows["total"]["relative_delta"] is None


@pytest.mark.parametrize("content, message", [
    ("{oops", "is not valid JSON"),
    ('["a list"]', "has no model-expert schema"),
    ('{"total": 5}', "has no model-expert schema"),
    ('{"schema": "model-expert/zzz/1"}', "which compare does not read"),
])
def test_bad_files_are_user_errors(tmp_path, content, message):
    with pytest.raises(UserError, match=message):
        load_sections(_write(tmp_path, "bad.json", content))


def _run(*args):
    return subprocess.run([sys.executable, "scripts/compare.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_cli_markdown_json_and_errors(tmp_path):
    base, head = _write(tmp_path, "b.json", BASE), _write(tmp_path, "h.json", HEAD)
    shown = _run(base, head)
    assert shown.returncode == 0, shown.stderr
    cells = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
             for line in shown.stdout.splitlines() if line.startswith("| ")}
    # 1,049,600 / 13,529,600 = 7.758 %; 300e6 B = 286.10 MiB; 400e6 - 300e6 = 100e6 B = 95.37 MiB
    assert cells["Parameters (total)"] == ["13,529,600", "14,579,200", "+1,049,600", "+7.76 %"]
    assert cells["Peak training memory"] == ["381.47 MiB", "286.10 MiB", "-95.37 MiB", "-25.00 %"]
    assert cells["Gradient findings"] == ["2", "1", "+0 / -1", "—"]
    as_json = _run(base, head, "--json")
    data = json.loads(as_json.stdout)
    assert data["schema"] == "model-expert/compare/1" and next(m for m in data["metrics"] if m["key"] == "total")["delta"] == 1_049_600
    for args in ([base, str(tmp_path / "missing.json")], [base, _write(tmp_path, "x.json", "{oops")]):
        bad = _run(*args)
        assert bad.returncode == 2 and bad.stdout == ""
        assert len(bad.stderr.strip().splitlines()) == 1 and bad.stderr.startswith("compare.py: error: ")


# --- compare.py --base REV: both reviews in one command ---------------------------------------------------

MODEL = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, {hidden}), nn.ReLU(), nn.Linear({hidden}, 2))

    def forward(self, x):
        return self.net(x)
'''
FAST = ["--input", "float32[B=4,8]", "--skip", "probe", "--skip", "contract", "--skip", "grads", "--skip", "lint"]


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


def test_base_rev_reviews_the_revision_and_the_working_tree(tmp_path):
    repo = tmp_path / "project"
    (repo / "models").mkdir(parents=True)
    _git(repo, "init", "-q")
    for hidden in (16, 32):
        (repo / "models" / "net.py").write_text(MODEL.format(hidden=hidden))
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "-m", f"hidden {hidden}")
    (repo / "models" / "net.py").write_text(MODEL.format(hidden=64))  # uncommitted: the working tree is the head
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    before = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout
    done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compare.py"), "--base", "HEAD~1",
                           "net.py:Net", *FAST], cwd=repo / "models", capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(scratch)})
    assert done.returncode == 0, done.stderr
    cells = {line.strip("|").split("|")[0].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
             for line in done.stdout.splitlines() if line.startswith("| ")}
    # Linear(8, h) + Linear(h, 2) = 8h + h + 2h + 2 = 11h + 2: 178 at h = 16 (HEAD~1), 706 at h = 64 (working tree)
    assert cells["Parameters (total)"][:3] == ["178", "706", "+528"]
    assert cells["Priority 1 issues"][:2] == ["0", "0"]
    assert cells["Largest batch that fits"][0] != "not measured"
    assert "Training memory (summary's batch)" in cells and "Starting learning rate" in cells
    assert done.stdout.startswith("### Model changes: `HEAD~1 (")
    # the user's checkout is as it was: same status, no extra worktree, nothing left in the temporary directory
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == before
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True).stdout
    assert len(worktrees.strip().splitlines()) == 1, worktrees
    assert [p.name for p in scratch.iterdir() if p.name.startswith("model-expert-compare-")] == []


def test_base_rev_errors_are_one_line(tmp_path):
    repo = tmp_path / "project"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "net.py").write_text(MODEL.format(hidden=4))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one")
    for args, message in ((["--base", "HEAD~5", "net.py:Net", *FAST], "git rev-parse"),
                          (["--base", "HEAD", "net.py:Net", "--out", "x", *FAST], "drop --out"),
                          (["--base", "HEAD"], "needs the TARGET")):
        done = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "compare.py"), *args], cwd=repo,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and done.stdout == "", (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr, (args, done.stderr)
