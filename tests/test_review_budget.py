"""report.py --budget-s: the behavioural checks' batch and steps are sized from flops' count, never from the clock."""

import json

import pytest

from model_expert import recommend, report

GRADS, PROBE_EXTRA = report.GRADS_DEFAULT_BATCHES, report.PROBE_EXTRA_STEPS
ALL = frozenset(report.BEHAVIOURAL)
# 60 s at the nominal 40 GFLOP/s, 60% of it for the behavioural checks
ALLOWED = 0.6 * 60 * 4e10
# training-step equivalents at the fixed counts: 48 contract forwards / 3 + 3 grads batches + 25 + 20 + 4 probe steps
FULL_STEPS = 48 / 3 + 3 + 25 + 20 + 4


def workload(step_flops, batch, budget_s=60.0, run=ALL):
    return report.behavioural_workload({"step_flops": step_flops, "batch_size": batch}, budget_s, "cpu", run, GRADS, False)


def test_constants_are_the_ones_the_closed_forms_assume():
    assert report.NOMINAL_FLOPS_PER_S["cpu"] == 4e10 and report.BEHAVIOURAL_SHARE == 0.6
    assert (report.CONTRACT_FORWARDS, report.REPORT_PROBE_STEPS, report.REPORT_PROBE_SWEEP_STEPS, PROBE_EXTRA) == (48, 25, 20, 4)


def test_a_model_that_fits_runs_at_the_traced_batch_and_the_fixed_counts():
    plan = workload(1e9, 8)  # 68 x 1 GFLOP = 68 GFLOP <= 1,440 GFLOP
    assert FULL_STEPS * 1e9 <= ALLOWED
    assert (plan["batch_size"], plan["probe_steps"], plan["probe_sweep_steps"], plan["grads_batches"]) == (8, 25, 20, 3)
    assert plan["reduced"] == [] and plan["estimated_flops"] == pytest.approx(FULL_STEPS * 1e9)


def test_a_larger_model_runs_on_the_largest_batch_that_fits():
    plan = workload(4e10, 8)  # 5 GFLOP per sample: 1,440 / (68 x 5) = 4.2 -> batch 4
    assert (plan["batch_size"], plan["traced_batch_size"]) == (4, 8)
    assert (plan["probe_steps"], plan["probe_sweep_steps"], plan["grads_batches"]) == (25, 20, 3)
    assert plan["reduced"] == ["batch"] and plan["estimated_flops"] == pytest.approx(FULL_STEPS * 4 * 5e9)


def test_a_model_too_large_for_the_smallest_batch_runs_fewer_steps_never_below_the_minimums():
    plan = workload(8e11, 8)  # 100 GFLOP per sample; batch 2 = 200 GFLOP; 68 steps = 13,600 GFLOP; scale 0.106
    scale = ALLOWED / (FULL_STEPS * 2e11)
    assert (plan["batch_size"], plan["reduced"]) == (2, ["batch", "steps"])
    assert plan["probe_steps"] == max(10, int(25 * scale)) == 10
    assert plan["probe_sweep_steps"] == max(8, int(20 * scale)) == 8
    assert plan["grads_batches"] == 2
    assert plan["estimated_flops"] == pytest.approx((16 + 2 + 10 + 8 + 4) * 2e11)


def test_a_fixed_batch_is_kept_and_only_the_steps_shrink():
    plan = workload(1e11, None)  # inputs without a resizable batch: 68 x 100 GFLOP; scale 0.21
    assert plan["batch_size"] is None and plan["reduced"] == ["steps"]
    assert (plan["probe_steps"], plan["probe_sweep_steps"]) == (max(10, int(25 * ALLOWED / 6.8e12)), 8) == (10, 8)


def test_a_larger_budget_or_fewer_sections_restore_the_batch():
    assert workload(4e10, 8, budget_s=120)["batch_size"] == 8  # 2,880 GFLOP allowed >= 68 x 40
    assert workload(4e10, 8, run=frozenset({"grads"}))["batch_size"] == 8  # grads alone: 3 x 40 GFLOP


def test_no_flop_count_means_no_sizing():
    plan = report.behavioural_workload(None, 60.0, "cpu", ALL, GRADS, False)
    assert plan["batch_size"] is None and plan["probe_steps"] == 25 and "not sized" in plan["reason"]


AE = ["examples/autoencoder.py:ModelAutoEncoder", "--kwargs",
      json.dumps({"input_dim": 128, "hidden_dims": [64, 32], "embedding_dim": 16, "dropout": 0.0}),
      "--batch-size", "16", "--dim", "input_dim=128", "--skip", "memory", "--skip", "lint"]


def collect(monkeypatch, tmp_path, *argv):
    args = report.CAPABILITY.parser().parse_args([*AE, *argv, "--out", str(tmp_path)])
    return report.collect(args, on_progress=lambda message: None)


def test_the_review_runs_the_checks_on_the_batch_and_steps_it_states(monkeypatch, tmp_path):
    monkeypatch.setitem(report.NOMINAL_FLOPS_PER_S, "cpu", 1e3)  # a slow nominal machine: the smallest workload
    evidence = collect(monkeypatch, tmp_path)
    plan = evidence["review_budget"]
    assert (plan["batch_size"], plan["traced_batch_size"], plan["probe_steps"], plan["probe_sweep_steps"],
            plan["grads_batches"]) == (2, 16, 10, 8, 2)
    # what the sections measured, read from their own evidence
    assert evidence["trace"]["inputs"][0]["shape"][0] == 16  # resource figures at the user's batch
    assert len(evidence["grads"]["losses"]) == 2
    assert evidence["probe"]["overfit"]["steps"] == 10 and len(evidence["probe"]["lr_range"]["lrs"]) <= 8
    from model_expert.report_view import build_view
    scope = build_view(evidence)["scope"]
    assert "**Gradient sampling**: batch 2 (the traced batch is 16), 2 batches" in scope
    # the LR line search's runs shrink to report.MIN_SEARCH_STEPS = 4 steps when the steps are reduced
    searches = evidence["probe"]["lr_range"]["steps"]
    assert searches["per_trial"] == report.MIN_SEARCH_STEPS == 4
    assert (f"**Training probe**: batch 2 (the traced batch is 16), 10 fit-one-batch steps, 8 LR-range steps, "
            f"LR search {searches['trials']} runs of 4 steps") in scope
    assert scope[-1] == "**Cut by the clock**: nothing"


def test_a_spent_budget_leaves_the_checks_out_and_says_so(monkeypatch, tmp_path):
    monkeypatch.delenv(report.NO_CLOCK_ENV)  # conftest turns the clock off for every other review
    evidence = collect(monkeypatch, tmp_path, "--budget-s", "1e-6")
    for key in ("contract", "grads", "probe"):
        assert key not in evidence and evidence["not_measured"][key].startswith("left out: the review's --budget-s 1e-06 s")
    assert [cut.split(":")[0] for cut in evidence["review_budget"]["cut_by_clock"]] == ["contract", "probe", "grads"]
    assert "recommend" in evidence  # the rest of the review is still written
    # and recommend does not run the cut checks itself (that would spend the budget the clock saved)
    sources = evidence["recommend"]["evidence_sources"]
    assert sources["grads"] == sources["probe"] == f"{recommend.NOT_MEASURED} in the report"
