"""Shape traces of torch's own modules, Hugging Face models with keyword inputs, and the examples."""

import json

import pytest

from conftest import check_expected, run_script


def trace_json(*args):
    result = run_script("trace", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_torch_transformer_two_inputs():
    data = trace_json("tests/fixtures/hf_models.py:torch_transformer", "--input", "float32[B=2,S=5,32]", "--input", "float32[B,T=4,32]")
    assert data["outputs"] == [{"name": "out", "shape": [2, 4, 32], "dtype": "float32", "device": "cpu"}]
    modules = [c["module"] for c in data["calls"]]
    assert modules[0] == "(root)" and "encoder.layers.0.self_attn" in modules and "decoder.layers.1.multihead_attn" in modules
    encoder = next(c for c in data["calls"] if c["module"] == "encoder")
    assert encoder["outputs"][0]["shape"] == [2, 5, 32]  # memory keeps the source length S


def test_lstm_tuple_outputs():
    data = trace_json("tests/fixtures/hf_models.py:torch_lstm", "--input", "float32[B=3,T=7,10]")
    shapes = [o["shape"] for o in data["outputs"]]
    assert shapes == [[3, 7, 20], [2, 3, 20], [2, 3, 20]]  # output, (h_n, c_n) for 2 layers
    assert data["calls"][0]["own_parameters"] == 4 * (20 * 10 + 20 * 20 + 40) + 4 * (20 * 20 + 20 * 20 + 40)


def test_hugging_face_keyword_inputs():
    data = trace_json("tests/fixtures/hf_models.py:gpt2_tiny", "--input", "input_ids=int64[B=2,T=8]<128",
                      "--input", "attention_mask=int64[B,T]<2")
    assert {i["name"] for i in data["inputs"]} == {"input_ids", "attention_mask"}
    logits = next(o for o in data["outputs"] if o["name"] == "out.logits")
    assert logits["shape"] == [2, 8, 128]
    repeated = [c for c in data["calls"] if c["type"] == "GPT2Block"]
    assert [c["module"] for c in repeated] == ["transformer.h.0", "transformer.h.1"]


def test_bert_on_meta():
    data = trace_json("tests/fixtures/hf_models.py:bert_tiny", "--input", "input_ids=int64[B=2,T=16]<128", "--device", "meta")
    hidden = next(o for o in data["outputs"] if o["name"] == "out.last_hidden_state")
    assert hidden["shape"] == [2, 16, 64] and hidden["device"] == "meta"


def test_example_with_mask_uses_example_inputs():
    data = trace_json("examples/similarity_transformer.py:SimilarityTransformer", "--batch-size", "3")
    assert [i["name"] for i in data["inputs"]] == ["dataset_embeddings", "padding_mask", "model_embeddings"]
    assert data["inputs"][1] == {"name": "padding_mask", "shape": [3, 64], "dtype": "bool", "device": "cpu"}
    assert data["outputs"][0]["shape"] == [3, 32]
    encoder = next(c for c in data["calls"] if c["module"] == "encoder")
    assert [i["shape"] for i in encoder["inputs"]] == [[3, 64, 256], [3, 64]]


def test_repeated_calls_are_listed_each_time():
    data = trace_json("tests/fixtures/models.py:TiedLM", "--input", "int64[2,5]<100")
    # embed runs once, but the tied head is a separate module call
    assert [c["module"] for c in data["calls"]] == ["(root)", "embed", "norm", "head"]


def test_planted_shape_bug_names_the_module():
    result = run_script("trace", "tests/fixtures/models.py:ShapeBug", "--input", "float32[4,16]")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert "'blocks.1.proj' (Linear)" in line and "float32[4,24]" in line and "weight float32[8,32]" in line
    assert "mat1 and mat2 shapes cannot be multiplied" in line


def test_vary_flags_quadratic_attention():
    data = trace_json("tests/fixtures/hf_models.py:gpt2_tiny", "--input", "int64[B=1,T=8]<128", "--vary", "T=8,16", "--device", "meta")
    vary = data["vary"]
    assert vary["same_call_graph"]
    wte = next(c for c in vary["scaling_calls"] if c["module"] == "transformer.wte")
    assert wte["outputs"][0]["symbolic"] == "[1, T, 64]" and wte["outputs"][0]["growth"] == "linear"
    attention = {item["module"] for item in vary["quadratic_intermediates"]}
    assert {"transformer.h.0.attn", "transformer.h.1.attn"} <= attention
    assert any(i["symbolic"] == "[1, 4, T, T]" for i in vary["quadratic_intermediates"])


def test_vary_unknown_dim():
    result = run_script("trace", "tests/fixtures/models.py:TinyMLP", "--input", "float32[B=2,8]", "--vary", "T=2,4")
    assert result.returncode == 2 and "no input dim is named T" in result.stderr


@pytest.mark.expected_output
def test_expected_trace_table():
    result = run_script("trace", "examples/similarity_transformer.py:SimilarityTransformer",
                        "--input", "float32[B=2,T=16,512]", "--input", "bool[B,T]", "--input", "float32[M=4,512]",
                        "--max-depth", "2", "--vary", "T=16,32", "--device", "meta")
    assert result.returncode == 0, result.stderr
    check_expected("trace_similarity_transformer.txt", result.stdout)
