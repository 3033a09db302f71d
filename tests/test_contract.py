"""contract.py: planted defects and their correct counterparts, with the answer worked out beside each assert."""

import json

import pytest

from conftest import REPO, assert_same_state, model_state
from model_expert import cli
from model_expert.cli import main
from model_expert.contract.cli import CAPABILITY
from model_expert.target import import_location

C = "tests/fixtures/contract_models.py"
X_MASK = ["--input", "float32[B=4,T=6,8]", "--input", "mask=bool[B,T]"]


@pytest.fixture(autouse=True)
def at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


_CACHE: dict[tuple[str, ...], dict] = {}


def contract(*argv: str) -> dict:
    """The JSON contract.py --json prints (computed once per argument list)."""
    if argv not in _CACHE:
        import os
        previous = os.getcwd()
        os.chdir(REPO)
        try:
            data = CAPABILITY.analyse(CAPABILITY.parser().parse_args(list(argv)))
        finally:
            os.chdir(previous)
        _CACHE[argv] = json.loads(cli.to_json({"schema": CAPABILITY.schema, **data}))
    return _CACHE[argv]


def only_mask(data):
    assert len(data["masks"]) == 1
    return data["masks"][0]


def findings(data, severity, check):
    return [f for f in data["findings"] if f["severity"] == severity and f["check"] == check]


def test_mean_pooling_over_padding_leaks():
    data = contract(f"{C}:MeanPoolOverPadding", *X_MASK)
    mask = only_mask(data)
    assert mask["data_inputs"] == ["x"]
    assert mask["padding_made_up"] is True          # a spec's bool mask is all False: it pads nothing
    assert mask["honoured"] is False and mask["convention"] is None
    assert mask["max_abs_change"] > 1e-3            # far above the 1e-5 x max|output| tolerance
    risk = findings(data, "RISK", "mask")
    assert len(risk) == 1 and risk[0]["input"] == "mask" and "`x`" in risk[0]["text"] and "pooling" in risk[0]["fix"]


def test_masked_pooling_is_honoured_true_is_padding():
    data = contract(f"{C}:MaskedPool", *X_MASK)
    mask = only_mask(data)
    assert mask["honoured"] is True and mask["convention"] == "true_is_padding"
    assert mask["max_abs_change"] == 0.0            # padded rows are multiplied by exactly 0 before the sum
    assert mask["all_padded"] == "finite"           # 0 / clamp(0, min=1) = 0
    assert not findings(data, "RISK", "mask")


def test_all_padding_sample_that_raises_is_an_error():
    mask = only_mask(contract(f"{C}:RejectsEmptySample", *X_MASK))
    assert mask["honoured"] is True and mask["all_padded"] == "error"
    assert "a sample has no kept position" in mask["all_padded_error"]


def test_labels_are_targets_not_data_under_the_attention_mask():
    # GPT-2 reads labels at padded positions for its loss by design (-100 marks them); the logits at
    # kept positions are what the mask protects, and they are compared there.
    data = contract(f"{C}:gpt2_with_labels", "--input", "input_ids=int64[B=2,T=8]<64",
                    "--input", "attention_mask=int64[B,T]<2", "--input", "labels=int64[B,T]<64")
    mask = only_mask(data)
    assert mask["data_inputs"] == ["input_ids"] and mask["honoured"] is True
    assert mask["convention"] == "false_is_padding"
    # causal attention: kept positions before right padding never see it under either convention, so the
    # conventions are told apart with the padding on the left
    assert mask["padding_side"] == "left"


def test_integer_keep_mask_is_honoured_false_is_padding():
    data = contract(f"{C}:KeepMaskPool", "--input", "input_ids=int64[B=4,T=6]<50", "--input", "attention_mask=int64[B,T]<2")
    mask = only_mask(data)
    assert mask["input"] == "attention_mask" and mask["data_inputs"] == ["input_ids"]
    assert mask["honoured"] is True and mask["convention"] == "false_is_padding"
    assert mask["max_abs_change"] == 0.0
    ids = next(r for r in data["inputs"] if r["name"] == "input_ids")
    assert ids["high"] == 50 and 0 <= ids["min"] and ids["max"] <= 49  # drawn in [0, 50)


def test_unused_mask_leaks():
    data = contract(f"{C}:UnusedMask", *X_MASK)
    mask = only_mask(data)
    assert mask["honoured"] is False and mask["max_abs_change"] > 1e-3
    assert len(findings(data, "RISK", "mask")) == 1


def test_batch_mixing_reshape():
    # B=4, T=6: output row 0 averages flat rows t*4 + 0 = 0, 4, 8, 12, 16, 20 of the (B*T) rows,
    # i.e. samples 0, 0, 1, 2, 2, 3: sample 0's output depends on samples 1-3.
    data = contract(f"{C}:BatchMixingReshape", "--input", "float32[B=4,T=6,8]")
    assert data["batch_independent"] is False
    risk = findings(data, "RISK", "batch")
    assert len(risk) == 1 and risk[0]["output"] == "out" and risk[0]["dim"] == "B"


def test_batch_norm_is_independent_in_eval_and_an_info_in_train():
    data = contract(f"{C}:WithBatchNorm", "--input", "float32[B=4,8]")
    assert data["batch_independent"] is True
    modes = {row["mode"]: row["independent"] for row in data["batch"]}
    assert modes == {"eval": True, "train": False}  # train mode normalises with the batch's own mean and variance
    assert not findings(data, "RISK", "batch") and len(findings(data, "INFO", "batch")) == 1


def test_learned_positions_on_a_declared_set_is_a_risk():
    argv = (f"{C}:LearnedPositionsOnSet", "--input", "float32[B=2,N=10,8]")
    declared = contract(*argv, "--set", "N")
    row = next(p for p in declared["permutations"] if p["dim"] == "N")
    assert row["property"] == "order_dependent" and row["max_abs_change"] > 1e-3
    assert [f["dim"] for f in findings(declared, "RISK", "permutation")] == ["N"]
    assert not findings(contract(*argv), "RISK", "permutation")  # not declared a set: a property, not a defect
    # positions has 16 rows: N = 1 and 10 run, N = 20 fails on the addition
    checks = {c["size"]: c["status"] for c in next(r for r in declared["lengths"] if r["dim"] == "N")["checks"]}
    assert checks == {1: "ok", 10: "ok", 20: "error"}


def test_scorer_is_invariant_over_the_set_and_equivariant_over_candidates():
    data = contract(f"{C}:SetScorer", "--input", "float32[B=4,N=5,8]", "--input", "float32[M=7,8]",
                    "--set", "N", "--set", "M")
    by_dim = {p["dim"]: p for p in data["permutations"]}
    assert by_dim["N"]["property"] == "invariant" and by_dim["N"]["inputs"] == ["dataset"]
    assert by_dim["M"]["property"] == "equivariant" and by_dim["M"]["output_dim"] == 1  # scores [B, M]
    assert data["batch_independent"] is True
    assert not [f for f in data["findings"] if f["severity"] == "RISK"]


def test_equivariance_is_found_when_the_batch_and_the_candidates_have_the_same_size():
    # scores [B, M] with B = M = 4: the candidates' axis is the one that grows with M (axis 1), not axis 0
    data = contract(f"{C}:SetScorer", "--input", "float32[B=4,N=5,8]", "--input", "float32[M=4,8]")
    by_dim = {p["dim"]: p for p in data["permutations"]}
    assert by_dim["M"]["property"] == "equivariant" and by_dim["M"]["output_dim"] == 1


def test_sigmoid_head_is_bounded():
    data = contract(f"{C}:SigmoidHead", "--input", "float32[B=16,8]")
    (output,) = data["outputs"]
    assert output["bounded"] == [0.0, 1.0] and output["head_op"] == "SigmoidBackward0"
    assert 0.0 <= output["min"] <= output["max"] <= 1.0 and output["nonfinite"] == 0
    assert len(findings(data, "CAUTION", "range")) == 1
    assert "1e-5" in data["tolerance"]["rule"]
    assert data["determinism"]["eval_identical"] is True and data["determinism"]["train_stochastic"] is False


def test_hugging_face_bert_attention_mask_is_honoured_false_is_padding():
    data = contract("tests/fixtures/hf_models.py:bert_tiny", "--input", "input_ids=int64[B=2,T=16]<128",
                    "--input", "attention_mask=int64[B,T]<2")
    mask = only_mask(data)
    assert mask["data_inputs"] == ["input_ids"]
    assert mask["honoured"] is True and mask["convention"] == "false_is_padding"
    assert data["batch_independent"] is True
    assert {o["name"] for o in data["outputs"]} == {"out.last_hidden_state", "out.pooler_output"}
    pooler = next(o for o in data["outputs"] if o["name"] == "out.pooler_output")
    assert pooler["bounded"] == [-1.0, 1.0]  # BertPooler ends in tanh


def test_bundled_similarity_transformer(capsys):
    model = getattr(import_location(C, "TARGET"), "SIMILARITY_INSTANCE")
    before = model_state(model)
    code = main(CAPABILITY, [f"{C}:SIMILARITY_INSTANCE", "--inputs", f"{C}:similarity_inputs",
                             "--set", "max_images", "--set", "num_models", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert_same_state(before, model_state(model))  # bit-identical, train mode kept, RNG restored
    data = json.loads(captured.out)
    assert data["dims"]["max_images"]["inputs"] == {"dataset_embeddings": [1], "padding_mask": [1]}
    assert data["dims"]["num_models"]["inputs"] == {"model_embeddings": [0]}
    mask = only_mask(data)
    assert mask["honoured"] is True and mask["convention"] == "true_is_padding"
    assert mask["padding_made_up"] is False  # the factory's own padding (lengths 16..64) is used
    assert mask["all_padded"] == "nan"       # eval-mode encoder fast path: NaN for an all-padding row
    assert len(findings(data, "CAUTION", "all_padded")) == 1
    assert mask["all_padded_op"] == "_transformer_encoder_layer_fwd"   # the fused layer, not a pooling 0/0
    assert (mask["caller_convention"], mask["convention_source"], mask["inverted"]) == ("true_is_padding", "data", False)
    assert mask["padding_invariant"] is True
    assert "dim" not in {p["dim"] for p in data["permutations"]}  # the 512 feature dim runs at no other size
    by_dim = {p["dim"]: p for p in data["permutations"]}
    assert by_dim["max_images"]["property"] == "invariant"
    assert by_dim["num_models"]["property"] == "equivariant" and by_dim["num_models"]["output_dim"] == 1
    assert data["batch_independent"] is True
    assert data["determinism"]["train_stochastic"] is True  # dropout 0.1
    assert not [f for f in data["findings"] if f["severity"] == "RISK"]


# ---- bad input: one stderr line, exit 2, nothing on stdout ----

@pytest.mark.parametrize("argv, expected", [
    ([f"{C}:IntegerOutput", "--input", "float32[B=2,8]"], "has no floating-point tensor"),
    ([f"{C}:MaskedPool", *X_MASK, "--set", "N"], "the named dims are B, T"),
    ([f"{C}:MaskedPool", *X_MASK, "--mask", "lengths"], "the tensor inputs are x, mask"),
    ([f"{C}:MaskedPool", *X_MASK, "--device", "meta"], "cannot run on --device meta"),
])
def test_bad_input(argv, expected, capsys):
    code = main(CAPABILITY, argv)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and expected in captured.err


def test_mask_covering_no_data_input_is_an_info():
    data = contract(f"{C}:MaskOverOtherDims", "--input", "float32[B=2,T=6,8]", "--input", "mask=bool[B,S=5]")
    mask = only_mask(data)
    assert mask["data_inputs"] == [] and mask["honoured"] is None
    (info,) = findings(data, "INFO", "mask")
    assert "covers no data input" in info["text"]


def test_json_through_the_real_script_carries_the_design_keys():
    from conftest import run_script
    result = run_script("contract", f"{C}:MaskedPool", *X_MASK, "--json")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    data = json.loads(result.stdout)
    assert data["schema"] == "model-expert/contract/1"
    for key in ("batch_independent", "masks", "permutations", "lengths", "outputs", "findings"):
        assert key in data
    assert set(data["masks"][0]) >= {"input", "data_inputs", "convention", "honoured", "max_abs_change", "all_padded"}
    assert set(data["permutations"][0]) >= {"dim", "inputs", "property", "output_dim", "max_abs_change"}
    assert set(data["outputs"][0]) >= {"name", "shape", "dtype", "min", "max", "mean", "std", "nonfinite"}


def test_a_risk_becomes_a_priority_1_issue_with_its_magnitude_and_fix(tmp_path):
    from conftest import run_script
    out = tmp_path / "review"
    result = run_script("report", f"{C}:MeanPoolOverPadding", *X_MASK, "--out", out,
                        *[arg for section in ("lint", "grads", "memory", "flops", "recommend") for arg in ("--skip", section)])
    assert result.returncode == 0, result.stderr[-2000:]
    markdown = (out / "analysis.md").read_text()
    evidence = json.loads((out / "analysis.json").read_text())
    change = evidence["contract"]["masks"][0]["max_abs_change"]
    p1 = markdown.split("**Priority 1 (Critical)**:")[1].split("**Priority 2 (Important)**:")[0]
    assert "1. padding mask (`mask`)" in p1 and f"up to {change:.3g}" in p1 and "**Fix**: apply `mask`" in p1
    assert "- **Padding mask**: `mask` over `x`: NOT honoured" in markdown
    assert "- [ ] Padding measured by contract.py: `mask` over `x`: NOT honoured" in markdown
    grounding = run_script("check_grounding", out / "analysis.md", out / "analysis.json")
    assert grounding.returncode == 0, grounding.stdout


# ---- issue 18: padding amount, the caller's convention, no hollow verdicts, direct batch independence ----

SETS = ("--inputs", f"{C}:set_inputs")  # lengths 3, 6, 9, 12 of 12; padding_mask True at each row's tail


def test_pooling_that_divides_by_the_padded_length_is_a_risk_naming_the_output():
    # zeroed padding cannot leak, but sum / N: the 3-item set pooled over 12 and over 48 positions differs 4-fold
    mask = only_mask(contract(f"{C}:CountPaddingPool", *SETS))
    assert mask["honoured"] is True and mask["convention"] == "true_is_padding"
    assert mask["padding_invariant"] is False and mask["output"] == "out"
    assert mask["padding_invariance"]["padded_lengths"] == [12, 48]     # longest set 12 = given; 4 x 12
    assert mask["padding_invariance"]["real_items"] == [3, 6, 9, 12]
    (risk,) = findings(contract(f"{C}:CountPaddingPool", *SETS), "RISK", "mask")
    assert risk["output"] == "out" and "padded items" in risk["text"] and "48" in risk["text"]


def test_a_biased_linear_after_zeroing_counts_the_padding():
    # proj(0) = bias: each padded item adds the bias to the sum, so 36 more padded items move the output
    data = contract(f"{C}:BiasCountsPadding", "--inputs", f"{C}:float_mask_inputs")
    mask = only_mask(data)
    assert mask["input"] == "mask"                  # float32 0/1 named mask: a mask
    assert mask["padding_invariant"] is False and len(findings(data, "RISK", "mask")) == 1


def test_inverted_against_the_callers_data_is_a_risk():
    data = contract(f"{C}:InvertedMaskScorer", *SETS)
    mask = only_mask(data)
    assert mask["convention"] == "false_is_padding"           # the model keeps True
    assert mask["caller_convention"] == "true_is_padding"     # the caller's rows end in True
    assert mask["convention_source"] == "data" and mask["inverted"] is True
    (risk,) = findings(data, "RISK", "mask")
    assert "inverted" in risk["text"] and risk["output"] == "out"


def test_correct_scorer_is_clean_true_is_padding():
    data = contract(f"{C}:CorrectSetScorer", *SETS)
    mask = only_mask(data)
    assert (mask["convention"], mask["caller_convention"], mask["inverted"]) == ("true_is_padding",) * 2 + (False,)
    assert mask["padding_invariant"] is True and mask["max_abs_change"] == 0.0
    assert not [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION")]


def test_declared_convention_wins_over_the_data():
    data = contract(f"{C}:CorrectSetScorer", *SETS, "--mask", "padding_mask=false_is_padding")
    mask = only_mask(data)
    assert mask["convention_source"] == "--mask" and mask["inverted"] is True


def test_float_keep_mask_read_from_the_data():
    mask = only_mask(contract(f"{C}:FloatMaskPool", "--inputs", f"{C}:float_mask_inputs"))
    assert (mask["convention"], mask["caller_convention"], mask["convention_source"]) == (
        "false_is_padding", "false_is_padding", "data")    # rows end in 0.0 and the 12-item row is all 1.0
    assert mask["padding_invariant"] is True


def test_transformer_encoder_fast_path_gives_one_convention():
    # eval mode writes 0 at padded rows: read the other way round, the 'kept' rows are 0 whatever the data (hollow)
    data = contract(f"{C}:EncoderWithMask", *SETS)
    mask = only_mask(data)
    assert mask["honoured"] is True and mask["convention"] == "true_is_padding" and mask["padding_invariant"] is True
    assert not findings(data, "RISK", "mask")


def test_nan_at_real_positions_is_a_risk_not_honoured():
    data = contract(f"{C}:NaNAtRealPositions", *SETS)
    mask = only_mask(data)
    assert mask["honoured"] is False and mask["nonfinite_outputs"] == ["out"]
    assert any("not finite at real positions" in f["text"] for f in findings(data, "RISK", "mask"))


def test_all_padding_nan_cause_is_measured():
    mask = only_mask(contract(f"{C}:MeanPoolNoClamp", *SETS))
    assert mask["all_padded"] == "nan" and mask["all_padded_op"] == "div"    # 0 / 0 in the pooling
    assert "division by a zero count" in mask["all_padded_cause"]


def test_heads_first_attention_weights_are_not_read_as_the_batch():
    # [B*heads, N, N]: axis 0 holds 2 rows per sample; each sample alone gives its 2 rows exactly
    data = contract(f"{C}:HeadsFirstAttention", "--input", "float32[B=4,N=6,8]")
    assert data["batch_independent"] is True
    weights = next(r for r in data["batch"] if r["output"] == "out[1]")
    assert weights["axis"] == 0 and weights["rows_per_sample"] == 2 and weights["method"] == "alone"


def test_writing_into_an_input_is_its_own_finding():
    data = contract(f"{C}:AddsPositionsInPlace", "--inputs", f"{C}:items_inputs")
    assert data["inputs_written_in_place"] == ["items"]
    assert [f["input"] for f in findings(data, "CAUTION", "inplace")] == ["items"]
    assert data["batch_independent"] is True and data["determinism"]["eval_identical"] is True
    assert not findings(data, "CAUTION", "determinism") and not findings(data, "RISK", "batch")


def test_bert_attention_weights_compared_at_real_queries_and_keys_only():
    data = contract(f"{C}:bert_with_attentions", "--input", "input_ids=int64[B=2,T=16]<128",
                    "--input", "attention_mask=int64[B,T]<2")
    mask = only_mask(data)
    assert mask["honoured"] is True and mask["convention"] == "false_is_padding"
    assert (mask["caller_convention"], mask["convention_source"]) == ("false_is_padding", "name")
    assert "out.attentions[0]" in mask["outputs_compared_at_kept_positions_only"]
    assert mask["padding_invariant"] is True and data["batch_independent"] is True
    assert not [f for f in data["findings"] if f["severity"] in ("RISK", "CAUTION")]  # tanh pooler: not the loss's


def test_every_finding_carries_output():
    for argv in [(f"{C}:CountPaddingPool", *SETS), (f"{C}:BatchMixingReshape", "--input", "float32[B=4,T=6,8]")]:
        assert all("output" in f for f in contract(*argv)["findings"])


def test_random_numbers_in_forward_make_masks_and_batch_not_checkable():
    # two eval forwards differ by the noise alone: a difference is no evidence of a leak or of mixing
    data = contract(f"{C}:NoisyMaskedPool", *X_MASK)
    assert data["batch_independent"] is None and only_mask(data)["honoured"] is None
    assert not [f for f in data["findings"] if f["severity"] == "RISK"]
    assert len(findings(data, "CAUTION", "determinism")) == 1
