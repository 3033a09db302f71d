"""flops.py: counts against FlopCounterMode run independently and against closed forms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert import cli, flops, gpus  # noqa: E402
from model_expert.errors import UserError  # noqa: E402
from model_expert.inputs import ModelInputs  # noqa: E402

MODELS = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn
    import transformers

    def tiny_gpt2():
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100,
                                                                    n_positions=64))

    class Mlp(nn.Module):
        def __init__(self, width: int = 32):
            super().__init__()
            self.fc1 = nn.Linear(16, width)
            self.fc2 = nn.Linear(width, 4)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

    class Spectral(nn.Module):
        """Uses torch.fft, which has no FLOP formula."""
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(16, 16)

        def forward(self, x):
            return torch.fft.rfft(self.proj(x)).abs()

    class TwoTowers(nn.Module):
        """Both towers are fed tensors that need no grad (like SimilarityTransformer's two projections)."""
        def __init__(self):
            super().__init__()
            self.left = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 8))
            self.right = nn.Linear(12, 8)

        def forward(self, a, b):
            return self.left(a) @ self.right(b).T

    class ReadsValues(nn.Module):
        """Reads a value (.item()): on meta it is assumed to be 1.0, and the FLOPs do not depend on it."""
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            y = self.proj(x)
            return y * float(y.sum().item())

    class SelectsByValue(nn.Module):
        """Data-dependent shape (boolean-mask indexing): needs tensor values, which meta tensors lack."""
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8)

        def forward(self, x):
            y = self.proj(x)
            return y[y > 0]
''')


@pytest.fixture(scope="module")
def models_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("flops_models") / "models.py"
    path.write_text(MODELS)
    return str(path)


def run_json(argv: list[str], capsys) -> dict:
    code = cli.main(flops.CAPABILITY, [*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def independent_total(model: nn.Module, *args) -> tuple[int, int]:
    """FlopCounterMode alone: (forward total, forward + backward total)."""
    with FlopCounterMode(display=False) as counter:
        out = model(*args)
        forward = counter.get_total_flops()
        out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return forward, counter.get_total_flops()


def count(model: nn.Module, *args, depth: int = 3) -> dict:
    counter = flops.count_step(model, ModelInputs(args=args))
    return flops.summarise(counter, model, depth)


# ---------------------------------------------------------------------------------------------
# Closed forms on single layers


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_linear_closed_form_and_flop_counter(input_requires_grad):
    batch, d_in, d_out = 3, 8, 5
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, requires_grad=input_requires_grad)
    data = count(layer, x)
    assert data["forward_flops"] == 2 * batch * d_in * d_out  # 2*3*8*5 = 240: one mm (addmm's bias add not counted)
    if input_requires_grad:
        assert data["backward_flops"] == 4 * batch * d_in * d_out  # grad input (2BIO) + grad weight (2BIO) = 480
    else:
        assert data["backward_flops"] == 2 * batch * d_in * d_out  # grad weight only = 240
    forward, total = independent_total(layer, x)
    assert (data["forward_flops"], data["forward_flops"] + data["backward_flops"]) == (forward, total)
    assert layer.weight.grad is None  # count_step left no gradient behind


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_conv2d_closed_form(input_requires_grad):
    batch, c_in, c_out, k, size = 2, 3, 5, 3, 10
    conv = nn.Conv2d(c_in, c_out, k)
    x = torch.randn(batch, c_in, size, size, requires_grad=input_requires_grad)
    out_hw = size - k + 1  # 8, no padding, stride 1
    forward_closed = 2 * batch * c_out * out_hw * out_hw * c_in * k * k  # 2*2*5*8*8*3*9 = 34,560
    data = count(conv, x)
    assert data["forward_flops"] == forward_closed == 34_560
    assert data["backward_flops"] == forward_closed * (2 if input_requires_grad else 1)  # grad input + grad weight
    forward, total = independent_total(conv, x)
    assert (data["forward_flops"], data["forward_flops"] + data["backward_flops"]) == (forward, total)


class Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_sdpa_block_on_meta_matches_counter_and_closed_form():
    b, h, t, d = 2, 4, 16, 8
    q, k, v = (torch.empty(b, h, t, d, device="meta", requires_grad=True) for _ in range(3))
    data = count(Attention(), q, k, v)
    assert data["forward_flops"] == 4 * b * h * t * t * d  # QK^T 2BHT^2D + AV 2BHT^2D = 65,536 (no causal discount)
    # On meta SDPA decomposes to math: 4 bmm in backward (dS=dO V^T, dV=P^T dO, dQ=dS K, dK=dS^T Q), each 2BHT^2D.
    assert data["backward_flops"] == 8 * b * h * t * t * d
    forward, total = independent_total(Attention(), q, k, v)
    assert (data["forward_flops"], data["forward_flops"] + data["backward_flops"]) == (forward, total)


@pytest.mark.parametrize("dtype,kernel", [(torch.float32, "efficient"), (torch.bfloat16, "flash")])
def test_sdpa_under_the_cuda_target_counts_the_fused_kernel_it_picks(dtype, kernel):
    """The CUDA kernels recompute the scores in backward: 5 matmuls of 2BHT^2D (QK^T again, dV, dP, dQ, dK) =
    2.5x the forward, where torch's math path on meta does 4 (2x)."""
    b, h, t, d = 2, 4, 16, 8
    q, k, v = (torch.empty(b, h, t, d, device="meta", dtype=dtype, requires_grad=True) for _ in range(3))
    counter = flops.count_step(Attention(), ModelInputs(args=(q, k, v)), target_device="cuda")
    forward = sum(counter.phase_counts["forward"]["Global"].values())
    backward = sum(counter.phase_counts["backward"]["Global"].values())
    assert forward == 4 * b * h * t * t * d
    assert backward == 10 * b * h * t * t * d
    assert counter.attention_kernels == {kernel: 1}


def test_sdpa_fused_cpu_kernel_is_counted_where_flop_counter_gives_zero():
    b, h, t, d = 2, 4, 16, 8
    q, k, v = (torch.randn(b, h, t, d, requires_grad=True) for _ in range(3))
    forward, total = independent_total(Attention(), q, k, v)
    data = count(Attention(), q, k, v)
    if "aten._scaled_dot_product_flash_attention_for_cpu" not in data["flops_by_op"]:
        pytest.skip("this CPU build did not pick the fused flash kernel")
    assert (forward, total) == (0, 0)  # FlopCounterMode's registry lacks the CPU kernel: a silent zero
    assert data["forward_flops"] == 4 * b * h * t * t * d  # 65,536
    # Fused backward recomputes the scores (1) and runs four gradient matmuls (4): 5 x 2BHT^2D.
    assert data["backward_flops"] == 10 * b * h * t * t * d
    assert "aten._scaled_dot_product_flash_attention_for_cpu" not in data["uncounted_ops"]


# ---------------------------------------------------------------------------------------------
# GPT-2 small, meta


def test_gpt2_small_meta_closed_form():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config()  # 12 layers, d=768, vocab 50257
    with torch.device("meta"):
        model = transformers.GPT2LMHeadModel(config)
    n_layer, d, vocab, seq = config.n_layer, config.n_embd, config.vocab_size, 1024
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    counter = flops.count_step(model, ModelInputs(kwargs={"input_ids": ids, "labels": ids}))
    data = flops.summarise(counter, model, depth=3)

    # Per block: c_attn 2T*d*3d + attn c_proj 2T*d*d + c_fc 2T*d*4d + mlp c_proj 2T*4d*d = 24*T*d^2,
    # plus attention QK^T and AV: 2*T*T*d each = 4*T^2*d. LM head (tied to wte): 2*T*d*V.
    block = 24 * seq * d**2 + 4 * seq**2 * d  # 14,495,514,624 + 3,221,225,472 = 17,716,740,096
    exact = n_layer * block + 2 * seq * d * vocab  # 212,600,881,152 + 79,047,426,048
    assert data["forward_flops"] == exact == 291_648_307_200
    assert data["backward_flops"] == 2 * exact  # every matmul's inputs require grad: dX and dW per matmul
    block_rows = [m for m in data["modules"] if m["type"] == "GPT2Block"]
    assert len(block_rows) == 12 and all(m["forward_flops"] == block for m in block_rows)
    assert all(m["backward_flops"] == 2 * block for m in block_rows)
    lm_head = next(m for m in data["modules"] if m["name"] == "lm_head")
    assert lm_head["backward_flops"] == 2 * 2 * seq * d * vocab  # grad hidden + grad (tied) weight

    # Kaplan-style: 2 * N_nonembedding * T + attention term + LM head (biases and LayerNorm parameters are in
    # N but add no matmul FLOPs, hence within 1%, not equal).
    n_nonembedding = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("transformer.wte",
                                                                                             "transformer.wpe")))
    closed = 2 * n_nonembedding * seq + n_layer * 4 * seq**2 * d + 2 * seq * d * vocab
    assert abs(data["forward_flops"] - closed) / closed < 0.01

    with FlopCounterMode(display=False) as independent:  # PyTorch's counter alone, same run
        model(input_ids=ids, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
    assert data["forward_flops"] + data["backward_flops"] == independent.get_total_flops()
    assert data["unsupported_ops"] == {}


# ---------------------------------------------------------------------------------------------
# Uncounted ops, rules, module rows


def test_uncounted_ops_listed_with_counts_and_rules(models_file, capsys):
    data = run_json([f"{models_file}:Spectral", "--input", "float32[B=2,16]"], capsys)
    # rfft has no formula: one r2c in forward; its backward is one c2c.
    assert data["unsupported_ops"] == {"aten._fft_r2c": 1, "aten._fft_c2c": 1}
    assert data["uncounted_op_rules"]["aten._fft_r2c"] == "unsupported"
    assert data["uncounted_ops"]["aten._fft_r2c"] == 1
    # Every uncounted op carries a rule; rules are written out in the output.
    assert set(data["uncounted_ops"]) == set(data["uncounted_op_rules"])
    assert set(data["uncounted_op_rules"].values()) <= set(data["op_rules"])
    assert data["uncounted_op_rules"]["aten.abs"] == "pointwise"
    assert data["uncounted_op_rules"]["aten.t"] == "view"
    assert flops.rule_for(torch.ops.aten.masked_fill_).name == "pointwise"  # in-place variant: its op's rule
    assert data["forward_flops"] == 2 * 2 * 16 * 16  # only the Linear: 1,024


def test_gpt2_uncounted_ops_are_all_ruled(models_file, capsys):
    data = run_json([f"{models_file}:tiny_gpt2", "--device", "meta", "--input", "input_ids=int64[B=2,T=32]<100",
                     "--input", "labels=int64[B,T]<100"], capsys)
    assert data["unsupported_ops"] == {}
    rules = data["uncounted_op_rules"]
    assert rules["aten.native_layer_norm"] == "normalisation"
    assert data["attention_kernels"] == {"efficient": 2}  # fp32 GPT-2 on the default CUDA target
    assert rules["aten.slice"] == "view" and rules["aten.tanh"] == "pointwise"  # gelu_new is tanh-based
    assert data["uncounted_ops"]["aten.native_layer_norm"] == 5  # 2 blocks x 2 + ln_f
    assert data["uncounted_ops"]["aten.native_layer_norm_backward"] == 5


def test_module_rows_depth_and_containers(models_file, capsys):
    data = run_json([f"{models_file}:Mlp", "--input", "float32[B=3,16]", "--depth", "1"], capsys)
    rows = {m["name"]: m for m in data["modules"]}
    assert set(rows) == {"(root)", "fc1", "fc2"} and rows["fc1"]["depth"] == 1
    assert rows["fc1"]["forward_flops"] == 2 * 3 * 16 * 32  # 3,072
    assert rows["fc2"]["forward_flops"] == 2 * 3 * 32 * 4  # 768
    assert rows["fc1"]["backward_flops"] == 2 * 3 * 16 * 32  # input x needs no grad: grad weight only
    assert rows["fc2"]["backward_flops"] == 4 * 3 * 32 * 4  # grad input + grad weight
    assert rows["(root)"]["forward_flops"] == data["forward_flops"] == 3072 + 768

    data = run_json([f"{models_file}:tiny_gpt2", "--device", "meta", "--input", "input_ids=int64[B=1,T=16]<100",
                     "--depth", "2"], capsys)
    rows = {m["name"]: m for m in data["modules"]}
    # transformer.h is a ModuleList (never called): its row is the sum of its two blocks.
    assert rows["transformer.h"]["summed_from_children"] is True
    assert rows["transformer.h"]["forward_flops"] == 2 * (24 * 16 * 64**2 + 4 * 16**2 * 64)  # 2 x 1,638,400


def test_backward_attribution_when_no_input_requires_grad(models_file, capsys):
    data = run_json([f"{models_file}:TwoTowers", "--input", "float32[B=4,16]", "--input", "float32[6,12]",
                     "--depth", "1"], capsys)
    rows = {m["name"]: m for m in data["modules"]}
    # left: Linear(16,32) grad weight only (input needs no grad) 2*4*16*32 = 4,096;
    #       Linear(32,8) grad input + grad weight 4*4*32*8 = 4,096.
    assert rows["left"]["backward_flops"] == 2 * 4 * 16 * 32 + 4 * 4 * 32 * 8
    assert rows["right"]["backward_flops"] == 2 * 6 * 12 * 8  # grad weight only: 1,152
    # The product (B,8)@(8,6) is in the root only: forward 2*4*8*6 = 384, backward two grads of 384 each.
    assert rows["(root)"]["backward_flops"] == rows["left"]["backward_flops"] + rows["right"]["backward_flops"] + 768
    assert data["backward_flops"] == rows["(root)"]["backward_flops"]


# ---------------------------------------------------------------------------------------------
# Time estimate


def test_step_time_matches_roofline_closed_form(models_file, capsys):
    data = run_json([f"{models_file}:tiny_gpt2", "--device", "meta", "--input", "input_ids=int64[B=4,T=32]<100",
                     "--input", "labels=int64[B,T]<100", "--gpu", "a100", "--precision", "bf16", "--mfu", "0.5"],
                    capsys)
    peak_bf16, peak_fp32, bandwidth = 312e12, 19.5e12, 2039e9  # A100 SXM4 80 GB data sheet, as in gpus.py
    assert data["gpu"]["name"] == "a100-80gb" and data["gpu"]["peak_flops_per_s"] == peak_bf16
    moved = data["bytes_moved"]
    forward = max(data["forward_flops"] / (peak_bf16 * 0.5), moved["forward"] / bandwidth)
    backward = max(data["backward_flops"] / (peak_bf16 * 0.5), moved["backward"] / bandwidth)
    optimizer = max(data["optimizer_flops"] / (peak_fp32 * 0.5), moved["optimizer"] / bandwidth)
    assert data["estimated_step_seconds"] == pytest.approx(forward + backward + optimizer, rel=1e-12)
    assert data["inference_seconds_per_batch"] == pytest.approx(forward, rel=1e-12)
    assert data["samples_per_second"] == pytest.approx(4 / data["estimated_step_seconds"])
    assert data["tokens_per_second"] == pytest.approx(4 * 32 / data["estimated_step_seconds"])
    # AdamW: 14 FLOPs and 7 tensor touches (4 read, 3 written) per parameter, bf16 = 2 bytes.
    n = data["trainable_parameters"]
    assert data["optimizer_flops"] == 14 * n
    assert moved["optimizer"] == 7 * 2 * n
    assert any("MFU 0.5" in line for line in data["assumptions"])


def test_tf32_and_fp32_peaks():
    a100 = gpus.find_gpu("a100")
    assert flops.math_dtype("fp32", allow_tf32=False) == "fp32" and a100.peak_for("fp32") == 19.5e12
    assert flops.math_dtype("fp32", allow_tf32=True) == "tf32" and a100.peak_for("tf32") == 156e12
    assert flops.math_dtype("bf16-autocast", allow_tf32=False) == "bf16"
    assert flops.math_dtype("fp16", allow_tf32=False) == "fp16"
    est = flops.estimate_step_time(forward_flops=1e12, backward_flops=2e12, optimizer_flops=0, forward_bytes=0,
                                   backward_bytes=0, optimizer_bytes=4e9, gpu=a100, dtype="tf32", mfu=0.4)
    # 1e12 / (156e12 * 0.4) + 2e12 / (156e12 * 0.4) + 4e9 / 2039e9
    assert est["step_seconds"] == pytest.approx(3e12 / (156e12 * 0.4) + 4e9 / 2039e9)
    assert est["phases"]["optimizer"]["bound"] == "memory"


def test_linear_traffic_closed_form():
    batch, d_in, d_out = 3, 8, 4
    layer = nn.Linear(d_in, d_out)
    counter = flops.count_step(layer, ModelInputs(args=(torch.randn(batch, d_in),)))
    # Forward: addmm reads bias (4) + x (24) + W^T (32), writes out (12); mean reads 12, writes 1;
    # ones_like (backward's seed) writes 1.                                          = 72 + 13 + 1 = 86
    assert counter.traffic["forward"].floating_elements == (d_out + batch * d_in + d_in * d_out + batch * d_out) \
        + (batch * d_out + 1) + 1
    # Backward: div (mean's grad) reads 12 writes 12; mm dW reads 12 + 24 writes 32; sum (bias grad) reads 12 writes 4
    assert counter.traffic["backward"].floating_elements == 24 + (12 + 24 + 32) + 16
    assert flops.phase_bytes(counter.traffic["forward"], flops.PRECISIONS["bf16"], 36) == 86 * 2
    assert flops.phase_bytes(counter.traffic["forward"], flops.PRECISIONS["bf16-autocast"], 36) == 86 * 2 + 36 * 6


# ---------------------------------------------------------------------------------------------
# Guard, errors, CLI


def test_model_is_unchanged_after_count(models_file):
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 8)
    rng = torch.get_rng_state()
    count(model, x)  # train mode inside: dropout draws random numbers
    assert not model.training and all(not m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(rng, torch.get_rng_state())
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_model_unchanged_when_backward_fails():
    class Breaks(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 4)

        def forward(self, x):
            return self.proj(x).detach()  # the loss will not require grad

    model = Breaks()
    with pytest.raises(UserError, match="does not require grad"):
        count(model, torch.randn(2, 4))
    assert model.training and model.proj.weight.grad is None


def test_meta_data_dependent_shape_is_explained(models_file, capsys):
    code = cli.main(flops.CAPABILITY, [f"{models_file}:SelectsByValue", "--device", "meta", "--input", "float32[2,8]"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "'(the model itself)'" in err or "SelectsByValue" in err
    assert "--device cpu" in err and "data-dependent" in err


def test_meta_value_reads_are_assumed_counted_and_shown(models_file, capsys):
    """.item() on meta returns 1.0 (as memory.py assumes); the count equals the CPU count and the read is said."""
    meta = run_json([f"{models_file}:ReadsValues", "--device", "meta", "--input", "float32[2,8]"], capsys)
    cpu = run_json([f"{models_file}:ReadsValues", "--device", "cpu", "--input", "float32[2,8]"], capsys)
    assert meta["data_dependent_reads"] == 1 and cpu["data_dependent_reads"] == 0
    assert (meta["forward_flops"], meta["backward_flops"]) == (cpu["forward_flops"], cpu["backward_flops"])
    assert meta["forward_flops"] == 2 * 2 * 8 * 8  # the Linear(8, 8) on 2 rows
    code = cli.main(flops.CAPABILITY, [f"{models_file}:ReadsValues", "--device", "meta", "--input", "float32[2,8]"])
    out = capsys.readouterr().out
    assert code == 0 and "Assumed: 1 data-dependent read(s)" in out


def test_hf_bert_with_padding_mask_counts_on_meta_as_on_cpu():
    """BERT's attention-mask checks read values; on meta they are assumed, and the FLOPs equal the CPU's."""
    import transformers
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, vocab_size=100, max_position_embeddings=64)
    counts = {}
    for device in ("meta", "cpu"):
        torch.manual_seed(0)
        with torch.device(device):
            model = transformers.BertForSequenceClassification(config)
            ids = torch.zeros(2, 16, dtype=torch.long)
            mask = torch.ones(2, 16, dtype=torch.long)
        if device == "cpu":
            mask[:, 12:] = 0
        counter = flops.count_step(model, ModelInputs(kwargs={"input_ids": ids, "attention_mask": mask}))
        counts[device] = (sum(counter.phase_counts["forward"]["Global"].values()),
                          sum(counter.phase_counts["backward"]["Global"].values()), counter.scalar_reads.reads)
    assert counts["meta"][:2] == counts["cpu"][:2] and counts["meta"][0] > 0
    assert counts["meta"][2] >= 1 and counts["cpu"][2] == 0


@pytest.mark.parametrize("argv, message", [
    (["--mfu", "0"], "--mfu must be in (0, 1], not 0.0"),
    (["--allow-tf32", "--precision", "bf16"], "--allow-tf32 applies to --precision fp32 only"),
    (["--depth", "-1"], "--depth must be 0 or more"),
    (["--gpu", "a100", "--target-device", "cpu"], "--target-device is cpu"),
])
def test_bad_options(models_file, capsys, argv, message):
    code = cli.main(flops.CAPABILITY, [f"{models_file}:Mlp", "--input", "float32[2,16]", *argv])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and captured.out == ""


def test_cli_subprocess_json_keys_and_bad_gpu(models_file):
    base = [sys.executable, os.path.join("scripts", "flops.py"), f"{models_file}:tiny_gpt2", "--device", "meta",
            "--input", "input_ids=int64[B=2,T=16]<100"]
    done = subprocess.run([*base, "--gpu", "h100", "--precision", "bf16-autocast", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["schema"] == "model-expert/flops/1"
    for key in ("forward_flops", "backward_flops", "modules", "uncounted_ops", "estimated_step_seconds",
                "assumptions", "samples_per_second", "tokens_per_second", "inference_seconds_per_batch"):
        assert key in data, key
    assert data["gpu"]["math_dtype"] == "bf16" and data["gpu"]["peak_flops_per_s"] == 989.4e12  # H100 SXM bf16

    bad = subprocess.run([*base, "--gpu", "a1000"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and "unknown --gpu 'a1000'" in bad.stderr
    assert "a100-80gb" in bad.stderr and "h100-80gb" in bad.stderr  # the names are listed


def test_table_and_markdown_render(models_file, capsys):
    argv = [f"{models_file}:Spectral", "--input", "float32[B=2,16]", "--gpu", "rtx4090", "--mfu", "0.4"]  # roofline
    assert cli.main(flops.CAPABILITY, argv) == 0
    table = capsys.readouterr().out
    assert "WARNING: ops with no FLOP formula" in table and "aten._fft_r2c x1" in table
    assert "Estimated training step on NVIDIA GeForce RTX 4090" in table
    assert cli.main(flops.CAPABILITY, [*argv, "--markdown"]) == 0
    markdown = capsys.readouterr().out
    assert markdown.startswith("### FLOPs: Spectral")
    proj_row = next(line for line in markdown.splitlines() if "`proj`" in line)
    assert [cell.strip() for cell in proj_row.strip("|").split("|")] == ["`proj`", "Linear", "1.02 KFLOP", "1.02 KFLOP"]
    step_row = next(line for line in markdown.splitlines() if line.startswith("| step"))
    # Memory-bound everywhere: (1,912 + 3,464 + 7,616) bytes / 1008e9 B/s = 12.9 ns (RTX 4090 bandwidth).
    assert "| 1,912 " in markdown and "| 3,464 " in markdown and "| 7,616 " in markdown
    assert step_row.split("|")[4].strip() == "12.9 ns"
    assert "**Not counted, no formula:** `aten._fft_c2c` x1, `aten._fft_r2c` x1" in markdown


def test_cpu_target_counts_an_lstm_and_a_conv_as_torch_runs_them():
    """The CPU target's memory-only replays (oneDNN's LSTM and convolution buffers) stay out of FLOP counting:
    the same FLOPs as with no target, and no op without a formula."""
    class SeqConv(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(8, 8, 3, padding=1)
            self.lstm = nn.LSTM(8, 16, batch_first=True)

        def forward(self, x):
            return self.lstm(self.conv(x).transpose(1, 2))[0].sum()
    x = torch.empty(2, 8, 12, device="meta")
    with torch.device("meta"):
        model = SeqConv()
    plain = flops.count_step(model, ModelInputs(args=(x,)))
    cpu = flops.count_step(model, ModelInputs(args=(x,)), target_device="cpu")
    assert plain.get_total_flops() == cpu.get_total_flops() > 0
    data = flops.summarise(cpu, model, 1)
    assert data["unsupported_ops"] == {}


@pytest.mark.parametrize("groups", [1, 4, 32])
def test_grouped_convolution_backward_is_twice_its_forward(groups):
    """A convolution's backward is two convolutions of the forward's size (input and weight gradients). torch's
    FlopCounterMode crosses every input channel with every output channel for the weight gradient, so a depthwise
    convolution's backward came out `groups` times too large (ConvNeXt-T's count 2.9x the published 4.5 GMACs)."""
    conv = torch.nn.Conv2d(32, 32, 3, padding=1, groups=groups)
    counter = flops.count_step(conv, ModelInputs(args=(torch.ones(2, 32, 8, 8, requires_grad=True),)))
    forward = 2 * (2 * 32 * 8 * 8) * (32 // groups) * 3 * 3  # 2 x outputs x (input channels per group x kernel)
    data = flops.step_flops(counter, conv, "fp32", "sgd")
    assert data["forward_flops"] == forward
    assert data["backward_flops"] == 2 * forward
