"""The review as a reader meets it: the summary first (its numbers are the JSON's, at one batch), one batch
throughout, actionable issues, what model.eval() switches, and no option the commands lack."""

import json
import re

import pytest

from conftest import REPO, run_script
from model_expert import registry, render
from model_expert.report_view import _eval_item, _issues
from test_report import ST_REVIEW

FX = "tests/fixtures/review_models.py"
PROBE_FX = "tests/fixtures/probe_models.py"
DATA_REVIEW = [f"{PROBE_FX}:HealthyMLP", "--data", f"{PROBE_FX}:labelled_batches", "--batch-inputs", f"{PROBE_FX}:pick_x",
               "--loss", f"{PROBE_FX}:mse_to_labels"]


@pytest.fixture(scope="module")
def st(review_cache):
    return review_cache("st", *ST_REVIEW)


def _recommendation(evidence, setting, role=None):
    return next(r for r in evidence["recommend"]["recommendations"] if r["setting"] == setting and r["role"] == role)


def test_the_summary_comes_first_with_the_jsons_numbers_at_the_recommended_batch(st):
    out, markdown, evidence = st
    summary = evidence["summary"]
    # the seed's 32 for a transformer, not the traced 8: memory and step time were measured again at 32
    batch = _recommendation(evidence, "batch_size", "single_gpu")["value"]
    assert summary["batch"] == batch == 32 and evidence["memory"]["batch_size"] == 8
    assert summary["peak_bytes"] == evidence["memory_recommended_batch"]["peak_bytes"]
    assert evidence["memory_recommended_batch"]["batch_size"] == 32
    assert summary["peak_bytes"] > evidence["memory"]["peak_bytes"]  # 4x the activations
    assert summary["step_seconds"] == evidence["flops_recommended_batch"]["estimated_step_seconds"]
    assert summary["max_batch_size"] == evidence["memory"]["max_batch_size"]
    assert summary["lr"] == _recommendation(evidence, "learning_rate")["value"]["start"] and summary["lr_source"]
    assert summary["p1"] == [] and summary["not_measured"] == {}
    assert markdown.index("### Summary") < markdown.index("### Architecture Overview")
    block = markdown.split("### Summary")[1].split("###")[0]
    lines = [f"- **Priority 1 issues**: none",
             f"- **Training memory at the recommended batch 32**: {render.mib(summary['peak_bytes'])} peak per step on "
             f"{evidence['memory']['gpu']} (fp32)",
             f"- **Training step at the recommended batch 32**: {render.seconds(summary['step_seconds'])} on "
             f"{evidence['flops']['gpu']['description']}",
             f"- **Largest batch that fits {evidence['memory']['gpu']}**: {summary['max_batch_size']}",
             f"- **Starting learning rate**: {summary['lr']:.3g} ("]
    for line in lines:
        assert line in block, line
    pr = (out / "pr.md").read_text()
    for line in lines:  # pr.md carries the same summary, plus contracts and training dynamics in words
        assert line in pr, line
    assert "- **Contracts**: padding mask `padding_mask` honoured" in pr and "- **Training dynamics**: fits one batch" in pr
    assert "aten." not in pr and "None" not in pr and "None" not in markdown
    # both batches, labelled, wherever memory and time are stated
    for label in ("Training step peak", "Inference peak", "Estimated training step", "Inference Latency"):
        assert f"**{label} at the recommended batch 32**" in markdown and f"**{label} at the traced batch 8**" in markdown
    assert "**Estimated Training Time at the recommended batch 32**" in markdown


def test_the_summary_and_pr_pass_the_grounding_check(st):
    out, _, _ = st
    for name in ("analysis.md", "pr.md"):
        result = run_script("check_grounding", out / name, out / "analysis.json")
        assert result.returncode == 0 and re.search(r"^0 of \d+ numbers fail", result.stdout, re.M), result.stdout


def test_a_data_review_states_the_datas_batch_and_never_none(review_cache):
    out, markdown, evidence = review_cache("data", *DATA_REVIEW)
    assert "None" not in markdown and "None" not in (out / "pr.md").read_text()
    # labelled_batches yields batches of 8 samples: the batch of every figure
    assert evidence["summary"]["batch"] == 8 and evidence["summary"]["batch_label"] == "the --data batch 8"
    assert "**Training memory at the --data batch 8**: " in markdown
    assert "**Estimated training step at the --data batch 8**: " in markdown
    assert "memory_recommended_batch" not in evidence  # --data batches keep their size
    result = run_script("check_grounding", out / "analysis.md", out / "analysis.json")
    assert result.returncode == 0, result.stdout


def test_report_prints_only_the_files_it_wrote(tmp_path):
    result = run_script("report", "tests/fixtures/models.py:TinyMLP", "--input", "float32[B=3,8]", "--skip", "probe",
                        "--skip", "contract", "--skip", "grads", "--out", tmp_path / "r")
    assert result.returncode == 0, result.stderr
    assert all(line.startswith(("wrote ", "not measured: ")) for line in result.stdout.splitlines()), result.stdout


def test_model_eval_names_rnn_dropout_functional_dropout_and_batchnorm():
    data = json.loads(run_script("trace", f"{FX}:RecurrentWithDropout", "--input", "float32[B=2,T=5,8]", "--json").stdout)
    modes = data["train_mode"]
    assert modes["dropout_modules"] == []  # no nn.Dropout: the old count said "0 dropout module call(s)"
    assert modes["inner_dropout"] == [{"module": "gru", "type": "GRU", "p": 0.2}]
    assert modes["functional_dropout"] == [{"class": "RecurrentWithDropout", "calls": 1}]
    assert modes["batchnorm_modules"] == [{"module": "norm", "type": "BatchNorm1d"}]
    item = _eval_item({"trace": data})
    assert "the dropout inside `gru` (nn.GRU dropout=0.2)" in item
    assert "1 functional dropout call(s) in RecurrentWithDropout.forward" in item
    assert "makes 1 BatchNorm module(s) (`norm`) use their running statistics" in item
    data = json.loads(run_script("trace", f"{FX}:ConvNorm", "--input", "float32[B=2,3,8,8]", "--json").stdout)
    item = _eval_item({"trace": data})
    assert item == ("Call model.eval() before inference: it makes 2 BatchNorm module(s) (`block.1`, `block.4`) use "
                    "their running statistics instead of the batch's")


def test_issues_say_what_to_change_what_goes_wrong_and_where_the_evidence_is():
    evidence = {
        "grads": {"findings": [{"severity": "RISK", "kind": "detached", "where": "encoder.proj", "message": "m"}]},
        "lint": {"findings": [{"severity": "RISK", "rule": "item-in-forward", "file": "model.py", "line": 40,
                               "code": "x.item()", "message": ".item() cuts the graph", "fix": "keep it a tensor"}]},
        "probe": {"findings": [{"severity": "RISK", "check": "overfit", "text": "cannot fit"}]},
        "contract": {"findings": [{"severity": "CAUTION", "check": "batch", "text": "mixes", "input": "x"}]},
    }
    issues = _issues(evidence)
    detached, lint_issue, probe_issue = issues["p1"]
    assert "`encoder.proj`" in detached["fix"] and ".detach()" in detached["fix"]
    assert "never learns" in detached["impact"] and detached["source"] == "grads.py, analysis.json `grads.findings`"
    assert lint_issue["fix"] == "line 40 of model.py: keep it a tensor" and lint_issue["source"].startswith("lint.py")
    assert "--lr" in probe_issue["fix"] and "will not fit the dataset" in probe_issue["impact"]
    assert issues["p2"][0]["source"] == "contract.py, analysis.json `contract.findings`"
    for issue in issues["p1"] + issues["p2"]:
        assert "see " not in issue["fix"] and issue["impact"] not in ("gradient flow", "the autograd graph")


def _options(text):
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))


def _parser_options(name):
    module = registry.load(name)
    if not hasattr(module, "CAPABILITY") and not hasattr(module, "build_parser"):
        return set()  # init: no options
    parser = module.CAPABILITY.parser() if hasattr(module, "CAPABILITY") else module.build_parser(name)
    return {option for action in parser._actions for option in action.option_strings}


def test_no_instruction_names_an_option_the_command_lacks():
    """Every --option the review's templates and view write must be report.py's (the review's reader runs report.py);
    every --option the agent and the slash command mention must be some script's."""
    report_options = _parser_options("report")
    review_text = "".join((REPO / path).read_text() for path in
                          ("templates/analysis.md.j2", "templates/pr.md.j2", "scripts/model_expert/report_view.py"))
    assert _options(review_text), "the collector found nothing: it is broken"
    assert sorted(_options(review_text) - report_options) == []
    every = set()
    for name in registry.CAPABILITIES:
        every |= _parser_options(name)
    from model_expert import compare
    every |= {o for a in compare.build_base_parser("compare")._actions for o in a.option_strings}
    agent = "".join(p.read_text() for p in (REPO / ".claude").rglob("*.md"))
    assert sorted(_options(agent) - every) == []
