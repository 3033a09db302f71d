"""Parameter counts against closed forms, published counts and PyTorch's own numel."""

import json

import pytest
from torch import nn

from conftest import check_expected, run_script
from model_expert.params import count_parameters


def params_json(*args):
    result = run_script("params", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_tiny_mlp_closed_form():
    data = params_json("tests/fixtures/models.py:TinyMLP")
    assert data["schema"] == "model-expert/params/1"
    assert data["total"] == (8 * 16 + 16) + (16 * 4 + 4)  # 144 + 68 = 212
    assert data["trainable"] == 212 and data["frozen"] == 0
    assert data["parameter_bytes"] == 212 * 4
    by_name = {m["name"]: m for m in data["modules"]}
    assert by_name["net.0"]["parameters"] == 144 and by_name["net.2"]["parameters"] == 68


def test_kwargs_change_the_count():
    data = params_json("tests/fixtures/models.py:make_mlp", "--kwargs", '{"hidden": 10, "frozen_first": true}')
    assert data["total"] == (8 * 10 + 10) + (10 * 4 + 4)  # 90 + 44 = 134
    assert data["frozen"] == 90 and data["trainable"] == 44


def test_tied_weights_counted_once_with_shared_list():
    data = params_json("tests/fixtures/models.py:TiedLM")
    assert data["total"] == 100 * 16 + 2 * 16  # embedding once (1,600) + LayerNorm (32)
    assert data["shared"] == [{"parameter": "embed.weight", "shape": [100, 16], "count": 1600, "shared_with": ["head.weight"]}]


def test_frozen_and_buffers():
    data = params_json("tests/fixtures/models.py:PartlyFrozen")
    assert data["total"] == 20 + 10 + 4
    assert data["frozen"] == 20 and data["trainable"] == 14
    # running_mean (2) + running_var (2) float32, num_batches_tracked (1) int64
    assert data["buffers"]["count"] == 5 and data["buffers"]["bytes"] == 2 * 4 + 2 * 4 + 8


def test_lstm_closed_form():
    # Per layer 4 gates x (W_ih + W_hh + b_ih + b_hh): layer 0: 4*(20*10 + 20*20 + 20 + 20) = 2,560;
    # layer 1 takes the 20-d hidden state: 4*(20*20 + 20*20 + 40) = 3,360.
    data = count_parameters(nn.LSTM(10, 20, num_layers=2))
    assert data["total"] == 2560 + 3360


def test_conv_closed_form():
    data = count_parameters(nn.Conv2d(3, 16, kernel_size=3))
    assert data["total"] == 3 * 16 * 3 * 3 + 16  # 448


def test_bytes_by_dtype_mixed():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4).to(dtype=__import__("torch").bfloat16))
    data = count_parameters(model)
    assert data["bytes_by_dtype"] == {"bfloat16": 20 * 2, "float32": 20 * 4}


@pytest.mark.parametrize("factory, published", [
    ("gpt2", 124_439_808),        # GPT-2 small, tied wte/lm_head counted once
    ("bert_base", 109_482_240),   # BERT-base uncased
    ("t5_small", 60_506_624),     # t5-small: shared embedding tied to both stacks and the LM head
    ("llama_7b", 6_738_415_616),  # Llama-7B shape (meta: no memory)
])
def test_published_counts_through_cli(factory, published):
    data = params_json(f"tests/fixtures/hf_models.py:{factory}", "--device", "meta", "--depth", "1")
    assert data["total"] == published


def test_depth_and_top():
    data = params_json("examples/similarity_transformer.py:SimilarityTransformer", "--depth", "1", "--top", "3")
    assert max(m["depth"] for m in data["modules"]) == 1
    assert len(data["top_layers"]) == 3
    # linear1 of each encoder layer: 256*1024 + 1024 = 263,168
    assert data["top_layers"][0]["parameters"] == 263_168


def test_examples_closed_form_from_config():
    data = params_json("examples/similarity_transformer.py:SimilarityTransformer",
                       "--config", "examples/config.ini:similarity_transformer")
    d, ff = 256, 1024
    layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 2 * 2 * d  # 789,760
    expected = (512 * d + d) + 4 * layer + 2 * d + (512 * d + d) + (d * d + d)
    assert data["total"] == expected == 3_488_000
    auto = params_json("examples/autoencoder.py:ModelAutoEncoder", "--config", "examples/config.ini:autoencoder")
    dims = [4096, 2048, 1024, 512]
    encoder = sum(a * b + b for a, b in zip(dims[:-1], dims[1:]))
    decoder = sum(a * b + b for a, b in zip(dims[::-1][:-1], dims[::-1][1:]))
    assert auto["total"] == encoder + decoder == 22_030_848


@pytest.mark.expected_output
def test_table_and_markdown_expected_output():
    table = run_script("params", "examples/similarity_transformer.py:SimilarityTransformer",
                       "--config", "examples/config.ini:similarity_transformer", "--depth", "2")
    assert table.returncode == 0, table.stderr
    check_expected("params_similarity_transformer.txt", table.stdout.replace(str(__import__("conftest").REPO), "."))
    markdown = run_script("params", "examples/autoencoder.py:ModelAutoEncoder", "--markdown")
    assert markdown.returncode == 0, markdown.stderr
    check_expected("params_autoencoder.md", markdown.stdout)
