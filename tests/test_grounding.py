"""check_grounding: every number of a review must be in the evidence, as rounded as the text shows."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert import grounding  # noqa: E402
from model_expert.grounding import Evidence, check_text, evidence_values, numbers_in_line  # noqa: E402

# Evidence as the scripts write it (small, hand-made; the numbers are chosen so every format can be
# checked by hand: 13,529,600 params x 4 bytes = 54,118,400 bytes = 54.1 MB = 51.61 MiB).
PARAMS = {"schema": "model-expert/params/1", "model": "SimilarityTransformer", "total": 13_529_600,
          "trainable": 13_529_600, "frozen": 0, "parameter_bytes": 54_118_400,
          "top_layers": [{"name": "encoder.layers.0.linear1", "type": "Linear", "parameters": 1_050_624,
                          "percent": 45.2}]}
MEMORY = {"schema": "model-expert/memory/1", "batch_size": 32, "peak_bytes": 473_956_352, "budget_bytes": 12_627_000_000,
          "budget_fraction": 0.3761, "inputs": [{"shape": [32, 200, 512], "dtype": "float32"}],
          "gpu": "NVIDIA GeForce RTX 3060 12 GB"}
FLOPS = {"schema": "model-expert/flops/1", "forward_flops": 1_234_567_890, "estimated_step_seconds": 0.01234}
GRADS = {"schema": "model-expert/grads/1", "global_grad_norms": [0.000541, 0.000539], "suggested_clip_norm": 0.00054}
RECOMMEND = {"schema": "model-expert/recommend/1",
             "recommendations": [{"setting": "learning_rate", "value": {"min": 2e-4, "max": 1e-3},
                                  "rule_text": "seed: This project's SimilarityTransformer (typically ~10M params)"},
                                 {"setting": "warmup", "value": {"fraction_min": 0.05, "fraction_max": 0.10}},
                                 {"setting": "adam_hyperparameters", "value": {"betas": [0.9, 0.999]}}]}
ALL_EVIDENCE = [PARAMS, MEMORY, FLOPS, GRADS, RECOMMEND]

HONEST_REVIEW = """\
## Model Analysis: SimilarityTransformer

### 1. Architecture Overview
- **Type**: Transformer (nn.TransformerEncoderLayer, float32, checked on torch 2.13.0)
- **Total Parameters**: 13,529,600 (13.5M; 13.53 M trainable, 0 frozen)
- **Model Size**: 51.6 MiB (54.1 MB) in `float32`
- `encoder.layers.0.linear1` holds 45 % of the parameters
- **Input**: shape `[32, 200, 512]`, written `float32[32,200,512]` too
- **Training step peak**: 452.0 MiB, 37.6 % of the budget on an NVIDIA GeForce RTX 3060 12 GB

### 2. Training Configuration Recommendation
1. Learning rate 2e-4 to 1e-3, betas (0.9, 0.999), warmup 5–10 % of the steps
2. Clip at 5.4e-04 (= 0.00054, the measured norm)

**Priority 1 (Critical)**:
- Forward pass: 1.2 GFLOP; one step takes about 12.3 ms on the card
"""


def _check(text, evidence=ALL_EVIDENCE):
    values = []
    for item in evidence:
        values.extend(evidence_values(item))
    return check_text(text, Evidence(values))


def test_honest_review_is_fully_grounded():
    result = _check(HONEST_REVIEW)
    assert [(f.line_number, f.number) for f in result.ungrounded] == []
    # exempt: "1." heading, "2." heading, "1."/"2." list items, "Priority 1", torch 2.13.0, float32 x3,
    # nn.TransformerEncoderLayer has none, "RTX 3060" is a number after a space: it is a claim,
    # grounded by the GPU's name in the memory evidence.
    assert result.exempt["heading-ordinal"] == 2
    assert result.exempt["list-ordinal"] == 2
    assert result.exempt["label-ordinal"] == 1
    assert result.exempt["version"] == 1
    assert result.checked == result.grounded > 20


PLANTED = HONEST_REVIEW + """\
- Parameters: 13,529,700 in total
- Roughly ~10M params, small enough for a laptop
- Inference latency: ~47 ms per batch of 32 samples
- Model size 51.6 MB
"""


def test_planted_fabrications_are_caught_with_their_line_numbers():
    result = _check(PLANTED)
    base = len(HONEST_REVIEW.splitlines())
    found = [(f.line_number, f.number) for f in result.ungrounded]
    # off by one digit; 10M claims 10.0e6 +- 0.5e6 (evidence 13.53e6); the latency is made up; the batch of
    # 32 IS in the evidence (input shape); 51.6 MB = 51.6e6 +- 0.05e6 bytes, but the file is 54.1e6 bytes.
    assert found == [(base + 1, "13,529,700"), (base + 2, "10M"), (base + 3, "47 ms"), (base + 4, "51.6 MB")]
    assert result.ungrounded[1].line == "- Roughly ~10M params, small enough for a laptop"


@pytest.mark.parametrize("text, evidence_value", [
    ("13,529,600", 13_529_600), ("13.5M", 13_529_600), ("13.53 M", 13_529_600), ("14M", 13_529_600),
    ("13530K", 13_529_600), ("0.0135B", 13_529_600),
    ("51.6 MiB", 54_118_400), ("54.1 MB", 54_118_400), ("52,850 KiB", 54_118_400), ("0.05 GiB", 54_118_400),
    ("5.4e-04", 0.00054), ("0.00054", 0.00054), ("5.40E-4", 0.000540), ("2e-4", 0.0002),
    ("45 %", 45.2), ("45%", 0.452), ("37.6 percent", 0.3761),
    ("1.2 GFLOP", 1_234_567_890), ("1.23 GFLOPs", 1_234_567_890), ("1,235 MFLOP", 1_234_567_890),
    ("12.3 ms", 0.01234), ("0.0123 s", 0.01234), ("12,340 us", 0.01234),
    ("-0.5", -0.5), ("4x", 4), ("2.00", 2),
])
def test_format_variants_are_grounded(text, evidence_value):
    result = _check(f"value: {text}", [{"v": evidence_value}])
    assert result.ungrounded == [], text


@pytest.mark.parametrize("text, evidence_value", [
    ("13,529,601", 13_529_600), ("13.6M", 13_529_600), ("13.52 M", 13_529_600), ("10M", 13_529_600),
    ("51.7 MiB", 54_118_400), ("51.6 MB", 54_118_400), ("5.5e-04", 0.00054), ("0.00055", 0.00054),
    ("46 %", 45.2), ("1.3 GFLOP", 1_234_567_890), ("13 ms", 0.01234), ("0.5", -0.5), ("2.01", 2),
])
def test_near_misses_are_not_grounded(text, evidence_value):
    result = _check(f"value: {text}", [{"v": evidence_value}])
    assert len(result.ungrounded) == 1, text


def test_exemptions_each_rule():
    cases = {
        "### 4. Training": ["heading-ordinal"],
        "3) fix the mask": ["list-ordinal"],
        "Priority 2 (Important)": ["label-ordinal"],
        "as the seed's §4.1 says": ["label-ordinal"],
        "dtype bf16 on rtx3060-12gb, layers.0.weight, GPT-2, x86_64": ["name"] * 7,
        "torch 2.13.0 and Python 3.11": ["version", "version"],
        "released 2024-05-01, May 2024 (2017)": ["date"] * 5,
        "see https://arxiv.org/abs/1706.03762 and [doc](docs/2.md)": ["link"] * 2,
    }
    for line, rules in cases.items():
        assert [rule for _, rule in numbers_in_line(line)] == rules, line


def test_bare_years_and_plain_numbers_are_claims():
    # 2048 looks like a year but is a sequence length: only dates and cited years are exempt.
    assert [rule for _, rule in numbers_in_line("sequence length 2048, 512-d embeddings")] == [None, None]


def test_range_carries_the_unit_to_its_first_number():
    tokens = [token for token, _ in numbers_in_line("warmup 5–10 % of 2,000 steps")]
    assert [(t.value, t.unit) for t in tokens] == [(5.0, "%"), (10.0, "%"), (2000.0, None)]
    assert _check("warmup 5–10 % of the steps", [{"f": [0.05, 0.10]}]).ungrounded == []


def test_shape_lists_and_strings_in_evidence_count():
    evidence = [{"shape": [32, 200, 512]}, {"note": "ReduceLROnPlateau(factor=0.5, patience=3, min_lr=1e-6)"}]
    text = "input `float32[32,200,512]` or (32, 200, 512); scheduler factor 0.5, patience 3, min_lr 1e-6"
    assert _check(text, evidence).ungrounded == []
    assert len(_check("batch 64", evidence).ungrounded) == 1


def test_quoted_rule_text_is_not_evidence_but_may_be_quoted():
    # the seed's "typically ~10M params" is quoted in the recommendation, but it is not a measurement
    rule = {"rule_text": 'seed §4: "SimilarityTransformer (typically ~10M params): 2e-4 to 1e-3"', "value": 3}
    assert evidence_values(rule) == [3.0]
    evidence = Evidence(evidence_values(rule), grounding.quoted_rules(rule))
    quoting = check_text('- rule: "SimilarityTransformer (typically ~10M params): 2e-4 to 1e-3"', evidence)
    assert quoting.ungrounded == [] and quoting.exempt == {"quoted-rule": 3}  # 10M, 2e-4, 1e-3
    claiming = check_text("- Total parameters: ~10M (typically ~10M params)", evidence)
    assert [f.number for f in claiming.ungrounded] == ["10M", "10M"]


def test_booleans_and_keys_are_not_evidence():
    assert evidence_values({"12": True, "x": None, "y": [False]}) == []
    assert len(_check("12 heads and 1 layer", [{"12": True}]).ungrounded) == 2


def _run(*args, cwd=REPO):
    return subprocess.run([sys.executable, "scripts/check_grounding.py", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_exit_codes_and_line_numbers(tmp_path):
    evidence_files = []
    for index, item in enumerate(ALL_EVIDENCE):
        path = tmp_path / f"evidence{index}.json"
        path.write_text(json.dumps(item))
        evidence_files.append(str(path))
    honest = tmp_path / "honest.md"
    honest.write_text(HONEST_REVIEW)
    planted = tmp_path / "planted.md"
    planted.write_text(PLANTED)

    ok = _run(str(honest), *evidence_files)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith("0 of ")

    bad = _run(str(planted), *evidence_files)
    assert bad.returncode == 1
    base = len(HONEST_REVIEW.splitlines())
    assert bad.stdout.splitlines()[0] == (f"{planted}:{base + 1}: ungrounded 13,529,700: 13,529,700 under 'Priority 1 (Critical)' is not "
                                          f"in the evidence; params.total is 13,529,600")
    assert bad.stdout.splitlines()[1] == "    - Parameters: 13,529,700 in total"
    assert bad.stdout.splitlines()[-1].startswith("4 of ")

    as_json = _run(str(planted), *evidence_files, "--json")
    data = json.loads(as_json.stdout)
    assert as_json.returncode == 1 and data["schema"] == grounding.SCHEMA
    assert [u["line_number"] for u in data["ungrounded"]] == [base + 1, base + 2, base + 3, base + 4]


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    review = tmp_path / "r.md"
    review.write_text("13.5M")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for args in ([str(review), str(broken)], [str(review), str(tmp_path / "missing.json")],
                 [str(tmp_path / "missing.md"), str(broken)]):
        result = _run(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.strip().splitlines()) == 1 and "error:" in result.stderr


def test_grouped_number_is_one_number_not_a_list():
    # 3, 488 and 1 are all in the evidence, but "3,488,001" claims one count that is not
    evidence = grounding.Evidence([3.0, 488.0, 1.0, 3_488_000.0])
    assert grounding.check_text("total 3,488,001", evidence).ungrounded
    assert not grounding.check_text("total 3,488,000", evidence).ungrounded
    assert not grounding.check_text("shape [3,488,1]", evidence).ungrounded  # a bracketed list reads element-wise


def test_units_match_only_evidence_of_their_kind():
    data = {"grads": {"global_grad_norms": [0.045]}, "flops": {"estimated_step_seconds": 0.00241},
            "memory": {"breakdown": {"activations": 48_992_768}}}
    evidence = grounding.Evidence(grounding.evidence_values(data), (), grounding.evidence_values_by_kind(data))
    assert grounding.check_text("latency 45 ms", evidence).ungrounded  # 0.045 is a gradient norm, not a time
    assert not grounding.check_text("step 2.41 ms", evidence).ungrounded
    assert not grounding.check_text("activations 46.7 MiB", evidence).ungrounded  # bytes by the enclosing key
    assert not grounding.check_text("norm 0.045", evidence).ungrounded  # no unit: any value


def test_each_grounded_number_names_its_evidence():
    data = {"params": {"total": 3_488_000, "frozen": 0}, "memory": {"peak_bytes": 112_876_032},
            "recommend": {"note": "measured 3,488,000 parameters"}}
    result = grounding.check_text("Total 3,488,000 (3.49M), 0 frozen; peak 107.6 MiB",
                                  grounding.Evidence(grounding.evidence_entries(data)))
    paths = {m["number"]: m["evidence_path"] for m in result.matches}
    # a number leaf wins over the same number quoted in a string; exact before rounded
    assert paths == {"3,488,000": "params.total", "3.49M": "params.total", "0": "params.frozen",
                     "107.6 MiB": "memory.peak_bytes"}


def test_hash_like_strings_do_not_overflow():
    # a module name with a sha1 digest ('..._1234e56789') reads as 1234 x 10**56789: not a number to ground
    data = {"lint": {"module": "model_expert_user_similarity_transformer_1234e56789"}, "params": {"total": 7}}
    evidence = grounding.Evidence(grounding.evidence_entries(data))
    assert not grounding.check_text("total 7", evidence).ungrounded
    assert grounding.numbers_in_line("x 9e999 y") == []
