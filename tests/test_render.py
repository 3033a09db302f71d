"""render.change: an equality check's change at or below its tolerance is stated as within tolerance, never as
its round-off figure (which differs between CPUs); above it the figure is kept."""

import pytest

from model_expert import render
from model_expert.contract import cli as contract_view


@pytest.mark.parametrize("value, tolerance, expected", [
    (7.45e-08, 1e-05, "within tolerance: ≤ 1e-5 x max|output|"),   # below: the AVX2 machine's round-off
    (1.04e-07, 1e-05, "within tolerance: ≤ 1e-5 x max|output|"),   # below: another CPU's, the same text
    (0.0, 1e-05, "within tolerance: ≤ 1e-5 x max|output|"),        # exactly equal
    (1e-05, 1e-05, "within tolerance: ≤ 1e-5 x max|output|"),      # at: the rule is |a - b| <= tolerance
    (1.0001e-05, 1e-05, "by 1e-05"),                               # just above: the figure is kept
    (0.4537, 1e-05, "by 0.454"),                                   # far above: three significant digits
])
def test_change_at_below_and_above_the_tolerance(value, tolerance, expected):
    assert render.change(value, tolerance=tolerance, bound="1e-5 x max|output|") == expected


def test_change_takes_the_checks_own_verdict():
    assert render.change(3e-7, within=True, bound="B") == "within tolerance: ≤ B"
    assert render.change(3e-7, within=False) == "by 3e-07"  # a zero tolerance (exact checks): any change is shown
    assert render.change(None, within=True) == "n/a"
    with pytest.raises(ValueError):
        render.change(1.0)


def _contract(change: float) -> dict:
    """contract.py's data for one float32 output, a mask, a batch dim and two dims, with the round-off CHANGE."""
    return {
        "batch_dim": "B", "batch_independent": True,
        "outputs": [{"name": "out", "dtype": "float32", "shape": [8, 32], "min": -1.0, "max": 1.0, "mean": 0.0,
                     "std": 0.5, "nonfinite": 0, "bounded": None}],
        "inputs": [], "lengths": [], "findings": [],
        "masks": [{"input": "mask", "data_inputs": ["x"], "honoured": True, "convention": "true_is_padding",
                   "max_abs_change": change, "all_padded": "finite"}],
        "batch": [{"output": "out", "mode": "eval", "method": "alone", "independent": True, "max_abs_change": change}],
        "permutations": [
            {"dim": "T", "size": 64, "set": True, "property": "invariant", "max_abs_change": change},
            {"dim": "D", "size": 512, "set": False, "property": "order_dependent", "max_abs_change": 0.4537}],
        "determinism": {"eval_identical": True, "train_stochastic": False},
    }


def test_contract_lines_hold_on_any_cpu():
    """The same verdicts with the round-off of two CPUs (7.45e-08 with AVX2, 8.94e-08 with AVX-512) render alike,
    and no round-off digit reaches the text; the order-dependent dim keeps its figure."""
    one, other = contract_view.render_lines(_contract(7.45e-08)), contract_view.render_lines(_contract(8.94e-08))
    assert one == other
    text = "\n".join(line for lines in one.values() for line in lines)
    assert "e-08" not in text and "7.45" not in text
    assert one["permutations"] == [
        "`T` (64, declared a set): invariant (output moves within tolerance: ≤ 1e-5 x max|output|, float32 round-off)",
        "`D` (512): order dependent (output moves by 0.454)"]
    assert one["batch"] == ["independent in eval mode: each sample run alone gives what it gives inside the batch "
                            "(`out`; largest difference within tolerance: ≤ 1e-5 x max|output|, float32 round-off)"]
    assert "padded data moves the output within tolerance: ≤ 1e-5 x max|output|, float32 round-off" in one["masks"][0]


def test_contract_bound_names_the_dtype_scaling_for_other_dtypes():
    data = _contract(1e-4)
    data["outputs"][0]["dtype"] = "bfloat16"
    line = contract_view.render_lines(data)["permutations"][0]
    assert line.endswith("invariant (output moves within tolerance: ≤ 1e-5 x max|output| x eps(dtype)/eps(float32))")


def test_lint_gradcheck_error_column():
    """A passed gradcheck's max |analytical - numerical| is float64 round-off: stated as within gradcheck's rule;
    a failed one keeps its figure."""
    from model_expert.lint import cli as lint_view
    rows = lint_view._function_rows({"custom_functions": [
        {"name": "Good", "gradcheck": "passed", "max_abs_error": 3.1e-10, "reason": None},
        {"name": "Bad", "gradcheck": "failed", "max_abs_error": 0.5, "reason": None},
        {"name": "Skipped", "gradcheck": "skipped", "max_abs_error": None, "reason": "no float argument"}]})
    assert [row[2] for row in rows] == ["within tolerance: ≤ 1e-5 + 1e-3 x |numerical|", "0.5", "-"]
