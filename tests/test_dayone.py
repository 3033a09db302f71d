"""What a new user builds on day one (issue 14, items 1-4): pruned, parametrized and weight-normed
models, lazy modules, example inputs written four ways, pure bf16/fp16 gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import REPO, assert_same_state, model_state, run_script
from model_expert import cli, flops, grads, params, trace
from model_expert.memory import cli as memory_cli
from model_expert.target import import_location

DAYONE = "tests/fixtures/dayone.py"
COPY_HARD = ("PrunedMLP", "ParametrizedMLP", "HookWeightNormMLP", "ParamWeightNormMLP")


def run(capability, target: str, *options: str) -> dict:
    """The capability's analysis in-process, from the same argv a user types."""
    args = capability.CAPABILITY.parser().parse_args([f"{DAYONE}:{target}", *options])
    return capability.CAPABILITY.analyse(args)


@pytest.fixture(scope="module")
def dayone():
    return import_location(str(REPO / DAYONE), "TARGET")


# --- item 1: copies of pruned / parametrized / weight-normed models --------------------------

@pytest.mark.parametrize("name", COPY_HARD)
def test_copy_computes_what_the_model_computes(dayone, name):
    from model_expert.model_copy import copy_model
    torch.manual_seed(0)
    model = getattr(dayone, name)()
    x = torch.randn(3, 8)
    duplicate = copy_model(model)
    assert torch.equal(duplicate(x), model(x))  # PyTorch's own forward is the reference
    ours = {id(t) for t in model.state_dict(keep_vars=True).values()}
    assert not ours & {id(t) for t in duplicate.state_dict(keep_vars=True).values()}
    on_meta = copy_model(model, "meta")
    assert {k: v.shape for k, v in on_meta.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert all(t.device.type == "meta" for t in on_meta.state_dict().values())
    assert on_meta(x.to("meta")).shape == (3, 4)


def test_plain_deepcopy_of_a_pruned_model_fails():
    """Why the shared copy exists: torch refuses to deepcopy pruning's derived `weight` attribute."""
    import copy
    from model_expert.model_copy import copy_model
    model = nn.Linear(4, 4)
    torch.nn.utils.prune.l1_unstructured(model, "weight", amount=0.5)
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)
    assert copy_model(model).weight_mask.sum() == 8  # 16 weights, round(0.5 * 16) = 8 kept


@pytest.mark.parametrize("name", COPY_HARD)
def test_memory_estimate_runs(name):
    data = run(memory_cli, name)
    # Parameters and buffers as the allocator holds them. PrunedMLP: fc1 weight_orig, bias, weight_mask and
    # the same three for fc2 -- six tensors, each at most 512 bytes, so one 512-byte CUDA block each.
    if name == "PrunedMLP":
        assert data["breakdown"]["params"] == 6 * 512
    assert data["peak_bytes"] > data["breakdown"]["params"]


def test_pruned_instance_is_left_as_it_was(dayone):
    model = dayone.pruned_instance
    before = model_state(model)
    run(memory_cli, "pruned_instance")
    run(grads, "pruned_instance", "--batches", "1")
    assert_same_state(before, model_state(model))
    assert isinstance(model.fc1.weight, torch.Tensor) and not model.fc1.weight.is_leaf  # the hook's tensor, unchanged


def test_recommend_on_a_pruned_model():
    result = run_script("recommend", f"{DAYONE}:PrunedMLP", "--json")
    assert result.returncode == 0, result.stderr


def test_params_shows_what_the_masks_zero():
    data = run(params, "PrunedMLP")
    assert data["total"] == (8 * 16 + 16) + (16 * 4 + 4)  # 212 stored, weight_orig counted whole
    # L1 pruning: round(0.5 * 128) = 64 of fc1.weight, round(0.25 * 64) = 16 of fc2.weight
    assert data["pruning"]["masked"] == 64 + 16 and data["pruning"]["count"] == 128 + 64
    assert [t["masked"] for t in data["pruning"]["tensors"]] == [64, 16]
    table = params.render_table({"schema": "", **data}, None)
    assert "80 of 192" in table and "132 (what torchinfo counts)" in table  # 212 - 80
    assert run(params, "ParametrizedMLP")["pruning"] is None


def test_weight_norm_counts():
    assert run(params, "HookWeightNormMLP")["total"] == 16 + 128 + 16 + 68  # weight_g, weight_v, bias; fc2
    assert run(params, "ParamWeightNormMLP")["total"] == 16 + 128 + 16 + 68  # original0, original1, bias; fc2


# --- item 2: lazy modules -------------------------------------------------------------------

@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_params_of_a_lazy_model(device):
    assert run(params, "LazyMLP", "--device", device)["total"] == (8 * 16 + 16) + (16 * 4 + 4)  # 212
    data = run(params, "LazyConvNet", "--device", device, "--inputs", f"{DAYONE}:lazy_conv_inputs")
    assert data["total"] == (4 * 3 * 3 * 3 + 4) + 2 * 4 + (4 * 2 + 2)  # conv 112 + BatchNorm 8 + head 10 = 130


def test_lazy_model_in_every_script():
    # LazyMLP on example_inputs (batch 4, 8 features): Linear FLOPs 2*B*in*out = 2*4*(8*16 + 16*4) = 1,536.
    assert run(flops, "LazyMLP")["forward_flops"] == 2 * 4 * (8 * 16 + 16 * 4)
    assert [r["shape"] for r in run(trace, "LazyMLP")["inputs"]] == [[4, 8]]
    assert len(run(grads, "LazyMLP", "--batches", "1")["parameters"]) == 4
    assert run(memory_cli, "LazyMLP", "--device", "meta")["peak_bytes"] > 0


def test_lazy_instance_is_not_materialised(dayone):
    rng = torch.get_rng_state()
    assert run(params, "lazy_instance")["total"] == 212
    assert [n for n, m in dayone.lazy_instance.named_modules()
            if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params()] == ["fc1", "fc2"]  # still lazy: a copy was materialised
    assert torch.equal(rng, torch.get_rng_state())


def test_lazy_model_without_inputs_says_how():
    result = run_script("params", "tests/fixtures/dayone.py:LazyConvNet")
    assert result.returncode == 2 and result.stdout == ""
    # the module-level example_inputs (float32[4,8]) does not fit a conv: one line naming the inputs and the layer
    assert result.stderr.count("\n") == 1 and "float32[4,8]" in result.stderr and "LazyConv2d" in result.stderr


# --- item 3: example inputs four ways -------------------------------------------------------

@pytest.mark.parametrize("name", ["StaticMethodInputs", "ClassMethodInputs", "InstanceMethodInputs"])
def test_example_inputs_methods(name):
    assert [r["shape"] for r in run(trace, name)["inputs"]] == [[5, 6]]
    assert [r["shape"] for r in run(trace, name, "--batch-size", "7")["inputs"]] == [[7, 6]]


def test_instance_method_is_called_on_the_built_model():
    data = run(trace, "InstanceMethodInputs", "--kwargs", '{"features": 10}')
    assert [r["shape"] for r in data["inputs"]] == [[5, 10]]


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_lightning_example_input_array(device):
    assert [r["shape"] for r in run(trace, "LightningStyleInputs", "--device", device)["inputs"]] == [[5, 6]]


def test_lightning_array_cannot_be_resized():
    with pytest.raises(cli.UserError, match="one fixed batch"):
        run(trace, "LightningStyleInputs", "--batch-size", "3")


# --- item 4: pure bf16 / fp16 gradients -----------------------------------------------------

def _first_batch_by_hand(dtype: torch.dtype) -> tuple[float, float]:
    """TinyMLP built under manual_seed(0), cast to DTYPE, on example_inputs() drawn under manual_seed(0),
    default loss (mean of the output in fp32): the loss and global gradient norm, straight from PyTorch."""
    from fixtures.models import TinyMLP, example_inputs
    torch.manual_seed(0)
    model = TinyMLP().to(dtype)
    torch.manual_seed(0)
    x = example_inputs().to(dtype)
    loss = model(x).float().mean()
    loss.backward()
    return float(loss.detach()), math.sqrt(sum(float(p.grad.float().norm()) ** 2 for p in model.parameters()))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_pure_low_precision_gradients(precision, dtype):
    args = grads.CAPABILITY.parser().parse_args(["tests/fixtures/models.py:TinyMLP", "--precision", precision,
                                                 "--batches", "1"])
    data = grads.CAPABILITY.analyse(args)
    loss, norm = _first_batch_by_hand(dtype)
    assert data["precision"] == precision
    assert data["losses"][0] == pytest.approx(loss, rel=1e-6)
    assert data["global_grad_norms"][0] == pytest.approx(norm, rel=1e-3)
    fp32_loss, _ = _first_batch_by_hand(torch.float32)
    assert data["losses"][0] != fp32_loss  # the cast happened


def test_low_precision_leaves_the_model_in_fp32():
    from fixtures.models import TinyMLP, example_inputs
    torch.manual_seed(0)
    model = TinyMLP()
    before = model_state(model)
    grads.analyse_model(model, lambda seed: cli.ModelInputs(args=(example_inputs(),)), precision="bf16", batches=1)
    assert_same_state(before, model_state(model))


def test_every_training_step_script_takes_pure_precisions():
    from model_expert import recommend, report
    for capability in (grads, memory_cli, flops, recommend, report):
        for precision in ("bf16", "fp16"):
            args = capability.CAPABILITY.parser().parse_args(["x.py:M", "--precision", precision, "--out", "r.md"]
                                                             if capability is report else ["x.py:M", "--precision", precision])
            assert args.precision == precision
