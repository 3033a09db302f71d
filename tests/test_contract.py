"""contract.py: planted defects and their correct counterparts, with the answer worked out beside each assert."""

import json

import pytest
import torch

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
    assert len(risk) == 1 and risk[0]["input"] == "x"


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
