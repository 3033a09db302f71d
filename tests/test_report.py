"""report.py end to end: every section rendered from evidence, expected-output files, grounding, findings, PR deltas."""

import json
import re

import pytest

from conftest import check_expected, run_script

ST = ["examples/similarity_transformer.py:SimilarityTransformer", "--config", "examples/config.ini:similarity_transformer",
      "--loss", "examples/ranking_loss.py:ranking_loss", "--group", "model_path=model_proj", "--group", "dataset_path=dataset_proj",
      "--set", "max_images", "--set", "num_models"]
HF = ["tests/fixtures/hf_models.py:gpt2_tiny", "--input", "input_ids=int64[B=2,T=16]<128", "--input", "labels=int64[B,T]<128"]
AE = ["examples/autoencoder.py:ModelAutoEncoder", "--config", "examples/config.ini:autoencoder", "--batch-size", "16"]
SECTIONS = ["### Architecture Overview", "### I/O Specification", "### Gradient Flow Analysis",
            "### Training Configuration Recommendation", "### Identified Issues & Recommendations",
            "### Memory & Performance Estimates", "### Implementation Checklist"]


def make_report(out, *args):
    result = run_script("report", *args, "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report: [1/" in result.stderr  # progress goes to stderr
    return (out / "analysis.md").read_text(), json.loads((out / "analysis.json").read_text())


ST_REVIEW = [*ST, "--vary", "max_images=32,64", "--steps", "20000", "--samples-per-epoch", "50000"]


@pytest.fixture(scope="module")
def st_report(review_cache):
    return review_cache("st", *ST_REVIEW)


def normalised(markdown: str, out) -> str:
    return markdown.replace(str(out), "OUT")


def test_every_section_for_the_similarity_transformer(st_report):
    out, markdown, evidence = st_report
    for heading in SECTIONS:
        assert heading in markdown
    assert "not measured" not in markdown
    assert evidence["params"]["total"] == 3_488_000 and "3,488,000" in markdown
    assert "- `padding_mask`: shape `[8, 64]`, dtype `torch.bool`" in markdown
    assert "**Stability Assessment**: STABLE" in markdown
    # contract.py's measured answers replace the padding checklist line (tests/test_contract.py checks them)
    assert "- **Padding mask**: `padding_mask` over `dataset_embeddings`: honoured (true_is_padding" in markdown
    assert "- **Order**: `num_models` (32, declared a set): equivariant (axis 1 of `out` permutes with it)" in markdown
    assert "Validate during the first iteration" not in markdown
    assert "- `padding_mask`: shape `[8, 64]`, dtype `torch.bool`, range {False, True}" in markdown
    assert "`model_path` (prefix `model_proj`): reached" in markdown and "`dataset_path` (prefix `dataset_proj`): reached" in markdown
    assert "build [64, max_images, max_images]" in markdown  # attention over the dataset's images is quadratic
    assert "```mermaid" in markdown  # the per-layer gradient chart GitHub renders
    assert "<details>" in (out / "pr.md").read_text()


@pytest.mark.expected_output
def test_expected_markdown_for_the_examples(st_report, review_cache):
    out, markdown, _ = st_report
    check_expected("analysis_similarity_transformer.md", normalised(markdown, out))
    ae_out, ae_markdown, _ = review_cache("ae-no-probe", *AE, "--skip", "probe")
    check_expected("analysis_autoencoder.md", normalised(ae_markdown, ae_out))


def test_grounding_passes_the_rendered_report(st_report):
    out, _, _ = st_report
    result = run_script("check_grounding", out / "analysis.md", out / "analysis.json")
    assert result.returncode == 0, result.stdout + result.stderr


def test_grounding_catches_planted_numbers(st_report, tmp_path):
    out, markdown, _ = st_report
    forged = markdown.replace("3,488,000 (3.49M", "3,488,001 (3.49M") + "\n- **Inference Latency**: ~45 ms per batch of 32\n"
    review = tmp_path / "forged.md"
    review.write_text(forged)
    result = run_script("check_grounding", review, out / "analysis.json")
    assert result.returncode == 1
    flagged = re.findall(r":(\d+): ungrounded (\S+(?: \S+)?):", result.stdout)
    numbers = {number for _, number in flagged}
    assert "3,488,001" in numbers and "45 ms" in numbers, result.stdout
    planted_line = forged.splitlines().index(next(l for l in forged.splitlines() if "3,488,001" in l)) + 1
    assert str(planted_line) in {line for line, _ in flagged}


def test_findings_merge_into_issues(tmp_path, st_report):
    out, _, _ = st_report
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps([
        {"priority": 1, "title": "Scores ignore dataset size", "current_state": "mean pooling", "impact": "ranking bias",
         "fix": "add a length feature", "evidence": "trace.outputs"},
        {"priority": 2, "title": "Warmup missing", "current_state": "no scheduler", "impact": "early instability",
         "fix": "linear warmup", "evidence": "recommend.recommendations"}]))
    review = tmp_path / "with_findings"
    markdown, evidence = make_report(review, *ST, "--findings", findings, "--skip", "memory", "--skip", "grads", "--skip", "probe",
                                     "--samples-per-epoch", "1000")
    p1 = markdown.split("**Priority 1 (Critical)**:")[1].split("**Priority 2")[0]
    p2 = markdown.split("**Priority 2 (Important)**:")[1].split("###")[0]
    assert "1. Scores ignore dataset size" in p1 and "**Fix**: add a length feature" in p1
    assert "1. Warmup missing" in p2
    assert evidence["reviewer_findings"][0]["priority"] == 1
    # the epoch is counted at the recommended batch (the seed's 32 for a transformer, the traced one is 8):
    # 1,000 samples at batch 32 = ceil(1000 / 32) = 32 steps, each the step time flops measured at batch 32
    at_32 = evidence["flops_recommended_batch"]
    assert at_32["batch_size"] == 32 and evidence["flops"]["batch_size"] == 8
    assert evidence["derived"]["steps_per_epoch"] == 32
    assert evidence["derived"]["epoch_seconds"] == pytest.approx(32 * at_32["estimated_step_seconds"])
    assert at_32["estimated_step_seconds"] > evidence["flops"]["estimated_step_seconds"]
    assert "**Estimated Training Time at the recommended batch 32**: " in markdown
    assert "per epoch of 1,000 samples (32 steps)" in markdown
    # memory was skipped: the summary says so rather than printing a number or "None"
    assert "- **Training memory at the recommended batch 32**: not measured: " in markdown and "None" not in markdown
    assert "memory" in evidence["not_measured"] or "memory" not in evidence


def test_bad_findings_file_fails_before_any_work(tmp_path):
    findings = tmp_path / "bad.json"
    findings.write_text(json.dumps([{"priority": 3, "title": "x", "current_state": "", "impact": "", "fix": ""}]))
    result = run_script("report", *ST, "--findings", findings, "--out", tmp_path / "never")
    assert result.returncode == 2 and "priority must be 1 (critical) or 2 (important)" in result.stderr
    assert not (tmp_path / "never").exists()


def test_hugging_face_model_report(review_cache):
    out, markdown, evidence = review_cache("hf", *HF)
    for heading in SECTIONS:
        assert heading in markdown
    assert evidence["recommend"]["architecture"]["architecture"] == "transformer"
    assert evidence["grads"]["stability"] == "STABLE"
    assert "- `input_ids`: shape `[2, 16]`, dtype `torch.int64`" in markdown
    assert not evidence["not_measured"], evidence["not_measured"]
    result = run_script("check_grounding", out / "analysis.md", out / "analysis.json")
    assert result.returncode == 0, result.stdout


def test_memory_the_estimate_cannot_see_is_a_caution_in_the_review(tmp_path):
    """A GRU's cuDNN buffers are outside the CUDA estimate: the review says so, with the measured size (an
    LSTM's are modelled: memory/cuda_lstm.py)."""
    markdown, evidence = make_report(tmp_path / "gru", "tests/fixtures/models.py:GRURegressor",
                                     "--input", "float32[B=4,T=12,8]")
    notes = evidence["memory"]["unmodelled_buffers"]
    assert len(notes) == 1 and "GRU" in notes[0] and "2.26x" in notes[0]
    assert f"**[CAUTION]** not in these numbers: {notes[0]}" in markdown
    result = run_script("check_grounding", tmp_path / "gru" / "analysis.md", tmp_path / "gru" / "analysis.json")
    assert result.returncode == 0, result.stdout
    _, st_evidence = make_report(tmp_path / "mlp", "tests/fixtures/models.py:TinyMLP", "--input", "float32[B=3,8]")
    assert st_evidence["memory"]["unmodelled_buffers"] == []


def test_compare_two_versions(tmp_path, st_report):
    base, _, _ = st_report
    head = tmp_path / "head"
    make_report(head, *ST, "--kwargs", '{"num_layers": 2}', "--skip", "grads", "--skip", "lint", "--skip", "probe")
    result = run_script("compare", base / "analysis.json", head / "analysis.json")
    assert result.returncode == 0, result.stderr
    # two encoder layers of 789,760 parameters each are gone: 3,488,000 -> 1,908,480
    assert "3,488,000" in result.stdout and "1,908,480" in result.stdout and "-1,579,520" in result.stdout


@pytest.mark.expected_output
def test_readme_shows_the_current_review():
    """The README's real review is the expected file (which the Quickstart command reproduces)."""
    from conftest import REPO
    readme = (REPO / "README.md").read_text()
    expected = (REPO / "tests" / "expected" / "analysis_similarity_transformer.md").read_text().replace("--out OUT", "--out review")
    assert expected in readme, "README's review is stale: paste tests/expected/analysis_similarity_transformer.md into it"
    quickstart = readme.split("# (1)")[1].splitlines()[1]
    assert expected.split("Reproduce with:_ `")[1].split("`")[0] in quickstart


def test_bounded_head_is_an_issue_only_before_a_loss_that_wants_logits(tmp_path):
    """A sigmoid before MSE/BCE is a fine head (a U-Net autoencoder); before a ranking or cross-entropy loss it is a P2."""
    from model_expert import report_view
    bounded = {"severity": "CAUTION", "check": "range", "input": "out", "text": "`out` is bounded to [0, 1] by its head"}
    mse = tmp_path / "mse_loss.py"
    mse.write_text("import torch.nn.functional as F\ndef loss(output, batch):\n    return F.mse_loss(output, batch[1])\n")
    ce = tmp_path / "ce_loss.py"
    ce.write_text("import torch.nn.functional as F\ndef loss(output, batch):\n    return F.cross_entropy(output, batch[1])\n")
    evidence = {"contract": {"findings": [bounded]}}
    assert report_view._issues({**evidence, "loss": f"{mse}:loss"})["p2"] == []
    both = tmp_path / "losses.py"       # one file, two losses: the named function's own text decides
    both.write_text(mse.read_text() + "\ndef ce(output, batch):\n    return F.cross_entropy(output, batch[1])\n")
    assert report_view._issues({**evidence, "loss": f"{both}:loss"})["p2"] == []
    assert len(report_view._issues({**evidence, "loss": f"{both}:ce"})["p2"]) == 1
    assert [i["title"] for i in report_view._issues({**evidence, "loss": f"{ce}:loss"})["p2"]] == ["output range (`out`)"]
    ranking = {**evidence, "recommend": {"architecture": {"loss_kind": "ranking"}}}
    assert len(report_view._issues(ranking)["p2"]) == 1
