"""FLOPs and bytes moved of one training step, per module and per phase.

Counting is PyTorch's `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add; matmul,
convolution and attention only), extended in two ways:
  * formulas for the CPU fused-attention kernels its registry lacks (`EXTRA_FLOP_FORMULAS`), so
    `scaled_dot_product_attention` on CPU is not a silent zero;
  * every executed aten op without a formula is recorded with its call count and the written rule
    that explains it (`OP_RULES`): a view, pointwise, a reduction, data movement, normalisation /
    softmax / loss / dropout (all O(numel) and ignored by the matmul-only convention), or
    *unsupported* (no formula and no rule: its FLOPs are missing from the totals).
Forward and backward are told apart by the autograd engine (ModuleTracker.is_bw), so they come
from one run. On `--device meta` nothing is allocated: a 7B model costs seconds and no memory.

Bytes moved follow an eager, unfused model of traffic (every non-view op reads its inputs and writes
its outputs once) plus formula-based optimizer traffic (`OPTIMIZER_STEPS`).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils import flop_counter as _fc
from torch.utils._pytree import tree_flatten
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.module_tracker import ModuleTracker

from .. import cli
from ..guard import preserved
from ..memory.device_rules import TargetFunctionMode
from ..memory.tracker import plausible_scalar
from ..runner import call_model, compute_loss, run_backward

aten = torch.ops.aten

# ---------------------------------------------------------------------------------------------
# FLOP formulas FlopCounterMode lacks (same conventions as its own registry).


def cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Fused CPU SDPA forward: QK^T plus AV, 2*B*H*Tq*Tk*(Dqk + Dv) (no causal discount, like the registry)."""
    return _fc.sdpa_flop_count(query_shape, key_shape, value_shape)


def cpu_flash_attention_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args,
                                      out_shape=None, **kwargs) -> int:
    """Fused CPU SDPA backward: score recompute plus four gradient matmuls, as the registry's flash backward."""
    return _fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def grouped_conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                               _output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """Convolution backward as FlopCounterMode counts it, with the weight gradient divided by GROUPS: its
    formula crosses every input channel with every output channel (a depthwise convolution's weight gradient
    counted channels x too many); each group's weight gradient only sees its own channels."""
    def t(shape):
        return [shape[1], shape[0]] + list(shape[2:])
    count = 0
    if output_mask[0]:
        count += _fc.conv_flop_count(grad_out_shape, w_shape, out_shape[0], not transposed)
    if output_mask[1]:
        first, second = (grad_out_shape, x_shape) if transposed else (x_shape, grad_out_shape)
        count += _fc.conv_flop_count(t(first), t(second), t(out_shape[1]), transposed=False) // max(int(groups), 1)
    return count


EXTRA_FLOP_FORMULAS: dict[Any, Callable[..., int]] = {
    aten.convolution_backward: grouped_conv_backward_flop,
    aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash_attention_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: cpu_flash_attention_backward_flop,
}

# ---------------------------------------------------------------------------------------------
# Rules for ops without a FLOP formula. First matching rule wins; no match = unsupported.

_DATA_MOVEMENT_OPS = frozenset({
    "embedding", "arange", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "zeros", "zeros_like", "new_zeros", "ones", "ones_like", "new_ones", "full", "full_like", "new_full",
    "scalar_tensor", "fill_", "zero_", "cat", "stack", "constant_pad_nd", "copy_", "_to_copy", "copy",
    "index_select", "index", "_unsafe_index", "index_put", "index_put_", "gather", "scatter", "scatter_",
    "tril", "triu", "roll", "flip", "repeat", "select_backward", "slice_backward", "masked_scatter",
    "lift_fresh_copy", "rand", "randn", "randint", "rand_like", "randn_like", "randperm", "resize_",
    "split_with_sizes_copy", "unbind_copy", "_local_scalar_dense", "nonzero", "masked_select",
    "unsafe_split", "unsafe_split_with_sizes", "unsafe_chunk",
})
_NORMALISATION_OPS = frozenset({
    "native_layer_norm", "native_layer_norm_backward", "native_group_norm", "native_group_norm_backward",
    "native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
    "_fused_rms_norm", "_fused_rms_norm_backward",
    "_softmax", "_safe_softmax", "_softmax_backward_data", "_log_softmax", "_log_softmax_backward_data",
    "nll_loss_forward", "nll_loss_backward", "nll_loss2d_forward", "nll_loss2d_backward",
    "mse_loss", "mse_loss_backward", "binary_cross_entropy", "binary_cross_entropy_backward",
    "binary_cross_entropy_with_logits", "smooth_l1_loss", "smooth_l1_loss_backward",
    "bernoulli", "bernoulli_", "native_dropout", "embedding_dense_backward", "cumsum", "cumprod",
    "max_pool2d_with_indices", "max_pool2d_with_indices_backward", "avg_pool2d", "avg_pool2d_backward",
    "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward", "max_pool3d_with_indices",
    "upsample_nearest2d", "upsample_nearest2d_backward", "upsample_bilinear2d", "upsample_bilinear2d_backward",
    "_fused_moving_avg_obs_fq_helper", "argmax", "argmin", "max", "min", "logsumexp",
})
_VIEW_LIKE_OPS = frozenset({"_unsafe_view", "lift_fresh", "_reshape_alias"})
# Creation ops whose tensor arguments only lend shape/dtype (not read), and ones that leave memory unwritten.
_SHAPE_ONLY_INPUT_OPS = frozenset({"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
                                   "new_empty", "new_empty_strided", "new_zeros", "new_ones", "new_full"})
_UNWRITTEN_OUTPUT_OPS = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"})


def _op_name(packet) -> str:
    return str(packet).removeprefix("aten.")


def _overloads(packet):
    try:
        return [getattr(packet, name) for name in packet.overloads()]
    except Exception:  # a non-aten packet (custom op, triton kernel): no schema to read
        return []


def _is_view(packet) -> bool:
    """An overload returns an alias of an input (schema; slice.Tensor yes, slice.str is list slicing), or view-like."""
    return _op_name(packet) in _VIEW_LIKE_OPS or any(o.is_view for o in _overloads(packet))


def _functional(packet):
    """The out-of-place op of an in-place one (masked_fill_ -> masked_fill), else the op itself."""
    name = _op_name(packet)
    if name.endswith("_") and not name.endswith("__") and hasattr(aten, name[:-1]):
        return getattr(aten, name[:-1])
    return packet


def _has_tag(packet, tag) -> bool:
    return any(tag in o.tags for o in _overloads(packet) + _overloads(_functional(packet)))


def _named_in(names: frozenset):
    return lambda packet: _op_name(packet) in names or _op_name(_functional(packet)) in names


@dataclass(frozen=True)
class OpRule:
    name: str
    text: str
    applies: Callable[[Any], bool]
    ignored: bool  # True: ignored by this written rule; False: unsupported (FLOPs missing)


OP_RULES: tuple[OpRule, ...] = (
    OpRule("view", "returns an alias of an input (view/reshape/transpose/detach): no arithmetic, no bytes moved",
           _is_view, True),
    OpRule("pointwise", "pointwise op (torch.Tag.pointwise: add, mul, gelu, tanh, where, ...): O(numel) arithmetic, "
           "ignored by the matmul-only convention of FlopCounterMode; memory-bound, its cost is in the byte model",
           lambda p: _has_tag(p, torch.Tag.pointwise), True),
    OpRule("reduction", "reduction (torch.Tag.reduction: sum, mean, ...): O(numel) arithmetic, ignored like pointwise",
           lambda p: _has_tag(p, torch.Tag.reduction), True),
    OpRule("data-movement", "creates, copies, concatenates or indexes tensors: no arithmetic; bytes are in the byte model",
           _named_in(_DATA_MOVEMENT_OPS), True),
    OpRule("normalisation", "normalisation, softmax, loss, dropout, pooling, scan: O(numel) arithmetic, "
           "ignored like pointwise",
           _named_in(_NORMALISATION_OPS), True),
    OpRule("unsupported", "no FLOP formula and no rule: its FLOPs are NOT in the totals (may be heavy: "
           "fft, cdist, sort, linalg, custom kernels)", lambda p: True, False),
)
_RULE_CACHE: dict[Any, OpRule] = {}


def rule_for(packet) -> OpRule:
    """The first OP_RULES entry that applies to an op without a FLOP formula."""
    rule = _RULE_CACHE.get(packet)
    if rule is None:
        rule = next(r for r in OP_RULES if r.applies(packet))
        _RULE_CACHE[packet] = rule
    return rule


# ---------------------------------------------------------------------------------------------
# The counter.


@dataclass
class PhaseTraffic:
    """Elements and bytes touched by non-view ops of one phase (eager execution, no fusion)."""

    floating_elements: int = 0
    other_bytes: int = 0


class GradAwareModuleTracker(ModuleTracker):
    """ModuleTracker whose backward exit also works for modules none of whose inputs require grad.

    ModuleTracker leaves a module's backward when the gradients of its inputs are computed; a module fed
    only tensors that need no grad (the first layer, a branch on constant embeddings) was never left, so
    every later backward FLOP was charged to it. Here such a module is left once every trainable
    parameter of it that this backward reaches has its .grad accumulated (post-accumulate hooks hold no
    reference to the gradient, so autograd still steals it instead of copying: bytes are unchanged).
    """

    def _fw_pre_hook(self, mod, input) -> None:
        args, _ = tree_flatten(input)
        if any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            super()._fw_pre_hook(mod, input)
            return
        name = self._get_mod_name(mod)
        self._get_append_fn(name, False)()
        parameters = [p for p in mod.parameters() if p.requires_grad]
        if parameters:
            self._exit_after_accumulation(parameters, self._get_pop_fn(name, True))

    def _exit_after_accumulation(self, parameters: list[torch.Tensor], exit_fn: Callable[[], None]) -> None:
        pending: set[int] | None = None

        def on_accumulated(parameter: torch.Tensor) -> None:
            nonlocal pending
            if pending is None:  # first call: which of the parameters does this backward reach?
                pending = {id(p) for p in parameters if torch._C._will_engine_execute_node(
                    torch.autograd.graph._get_grad_fn_or_grad_acc(p))}
            pending.discard(id(parameter))
            if not pending:
                exit_fn()
                pending = None  # ready for the next backward

        for parameter in parameters:
            self._hooks.append(parameter.register_post_accumulate_grad_hook(on_accumulated))


class MetaScalarReads(TorchDispatchMode):
    """On meta tensors, `.item()` / `bool(tensor)` (Hugging Face's mask and packed-sequence checks) return the
    value memory/tracker.py assumes (True, 1, 1.0) instead of failing; each read is counted."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            self.reads += 1
            return plausible_scalar(args[0])
        return func(*args, **(kwargs or {}))


class StepFlopCounter(_fc.FlopCounterMode):
    """FlopCounterMode that also keeps forward/backward apart, lists ops without a formula, and counts traffic.

    `flop_counts` (and so `get_total_flops`, `get_flop_counts`) is filled exactly as the base class does.
    """

    def __init__(self, custom_mapping: dict[Any, Any] | None = None):
        super().__init__(display=False, custom_mapping={**EXTRA_FLOP_FORMULAS, **(custom_mapping or {})})
        self.mod_tracker = GradAwareModuleTracker()
        # phase -> tracker module name -> op -> FLOPs
        self.phase_counts: dict[str, dict[str, dict[Any, int]]] = {
            phase: defaultdict(lambda: defaultdict(int)) for phase in ("forward", "backward")}
        self.uncounted_calls: dict[str, dict[Any, int]] = {"forward": defaultdict(int), "backward": defaultdict(int)}
        self.traffic = {"forward": PhaseTraffic(), "backward": PhaseTraffic()}
        self.scalar_reads = MetaScalarReads()
        self.attention_kernels: dict[str, int] = {}  # kernel -> calls, when counted under a target's rules
        self.kernels_of: str | None = None  # that target, or None: torch's own path on the model's device

    def __enter__(self):
        super().__enter__()
        self.scalar_reads.__enter__()  # innermost: sees .item() before the counter does
        return self

    def __exit__(self, *exc_info):
        self.scalar_reads.__exit__(*exc_info)
        return super().__exit__(*exc_info)

    def _count_flops(self, func_packet, out, args, kwargs):  # overrides FlopCounterMode's leaf-op hook
        phase = "backward" if self.mod_tracker.is_bw else "forward"
        formula = self.flop_registry.get(func_packet)
        if formula is None:
            rule = rule_for(func_packet)
            self.uncounted_calls[phase][func_packet] += 1
            if rule.name == "view":
                return out
        else:
            flops = formula(*args, **kwargs, out_val=out)
            for parent in set(self.mod_tracker.parents):
                self.flop_counts[parent][func_packet] += flops
                self.phase_counts[phase][parent][func_packet] += flops
        traffic = self.traffic[phase]
        name = _op_name(func_packet)
        touched = () if name in _UNWRITTEN_OUTPUT_OPS else (out,) if name in _SHAPE_ONLY_INPUT_OPS else (args, kwargs, out)
        for value in tree_flatten(touched)[0]:
            if isinstance(value, torch.Tensor):
                if value.is_floating_point():
                    traffic.floating_elements += value.numel()
                else:
                    traffic.other_bytes += value.numel() * value.element_size()
        return out


# ---------------------------------------------------------------------------------------------
# Precisions, optimizers, the roofline: one registry each, pure formulas.


@dataclass(frozen=True)
class PrecisionRule:
    math_dtype: str            # which peak of the GPU table matmuls run at
    activation_bytes: int      # width of floating activations and the copies matmuls read
    parameter_bytes: int       # width of parameters, gradients and optimizer states
    weight_cast_bytes_per_parameter: int  # autocast: read fp32 weight + write bf16 copy, per phase


PRECISIONS: dict[str, PrecisionRule] = {
    "fp32": PrecisionRule("fp32", 4, 4, 0),
    "bf16": PrecisionRule("bf16", 2, 2, 0),
    "fp16": PrecisionRule("fp16", 2, 2, 0),
    "bf16-autocast": PrecisionRule("bf16", 2, 4, 4 + 2),
    "fp16-autocast": PrecisionRule("fp16", 2, 4, 4 + 2),
}
assert set(PRECISIONS) == set(cli.PRECISIONS), "every --precision needs a rule"


@dataclass(frozen=True)
class OptimizerStepCost:
    flops_per_element: int   # arithmetic per trainable parameter element in one step
    tensors_read: int        # parameter, gradient and state tensors read per step
    tensors_written: int     # parameter and state tensors written per step
    derivation: str


OPTIMIZER_STEPS: dict[str, OptimizerStepCost] = {
    # torch.optim.AdamW defaults (weight_decay=0.01): p*=1-lr*wd (1); exp_avg.lerp_ (3);
    # exp_avg_sq.mul_.addcmul_ (4); denom = sqrt/div/add eps (3); p.addcdiv_ (3).
    "adamw": OptimizerStepCost(14, 4, 3, "AdamW: decay 1 + lerp 3 + second moment 4 + denom 3 + addcdiv 3; "
                                         "reads param, grad, exp_avg, exp_avg_sq; writes param, exp_avg, exp_avg_sq"),
    "adam": OptimizerStepCost(13, 4, 3, "Adam (weight_decay=0): AdamW without the decay multiply"),
    "sgd": OptimizerStepCost(2, 2, 1, "SGD (momentum=0): p.add_(grad, alpha=-lr); reads param, grad; writes param"),
    "sgd-momentum": OptimizerStepCost(5, 3, 2, "SGD momentum: buf.mul_.add_ (3) + p.add_ (2); "
                                               "reads param, grad, buf; writes param, buf"),
    "none": OptimizerStepCost(0, 0, 0, "no optimizer step"),
}
assert set(OPTIMIZER_STEPS) == set(cli.OPTIMIZERS), "every --optimizer needs a cost"

def optimizer_step_flops(trainable_elements: int, optimizer: str) -> int:
    """FLOPs of one optimizer step: trainable elements x the optimizer's per-element arithmetic."""
    return trainable_elements * OPTIMIZER_STEPS[optimizer].flops_per_element


def optimizer_step_bytes(trainable_elements: int, optimizer: str, parameter_bytes: int) -> int:
    """Bytes of one optimizer step: elements x (tensors read + written) x width (each touched once)."""
    cost = OPTIMIZER_STEPS[optimizer]
    return trainable_elements * (cost.tensors_read + cost.tensors_written) * parameter_bytes


def phase_bytes(traffic: PhaseTraffic, precision: PrecisionRule, weight_elements: int) -> int:
    """Traffic of a phase: floating elements at the precision's width + integer bytes + autocast weight casts."""
    return (traffic.floating_elements * precision.activation_bytes + traffic.other_bytes
            + weight_elements * precision.weight_cast_bytes_per_parameter)


# ---------------------------------------------------------------------------------------------
# Running the model.

_META_DATA_HINTS = ("meta tensor", "on meta", "meta device", "data-dependent", "cannot be called on meta", "register_meta",
                    "data-independent")


def _meta_failure(error: BaseException) -> bool:
    text = " ".join(str(e) for e in (error, error.__cause__) if e is not None).lower()
    return any(hint in text for hint in _META_DATA_HINTS)


def count_step(model: nn.Module, inputs, loss_fn=None, model_name: str = "the model",
               backward: bool = True, target_device: str | None = None) -> StepFlopCounter:
    """Run forward (+ loss + backward) of the model in train mode under a StepFlopCounter. Guarded.

    With TARGET_DEVICE, scaled_dot_product_attention runs the kernel that device picks (memory/device_rules.py),
    so the count is that kernel's (fused backward: 2.5x forward, recomputing the scores) and the bytes moved
    leave out score matrices it never writes; without, torch's own path on the model's device."""
    with preserved(model):
        model.train()
        counter = StepFlopCounter()
        rules = TargetFunctionMode(target_device, memory_kernels=False) if target_device else None
        with (rules or contextlib.nullcontext()), (rules.recompute_in_backward() if rules else contextlib.nullcontext()):
            with counter:
                output = call_model(model, inputs, model_name)
                if backward:
                    run_backward(compute_loss(loss_fn, output, batch=getattr(inputs, "batch", None)), model_name)
    if rules is not None:
        counter.attention_kernels = dict(rules.sdpa_backends_used)
        counter.kernels_of = target_device
    return counter


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())


def summarise(counter: StepFlopCounter, model: nn.Module, depth: int) -> dict[str, Any]:
    """Plain data from a finished counter: totals, module rows, per-op FLOPs, uncounted ops."""
    root = type(model).__name__
    phase_totals = {phase: sum(counts["Global"].values()) for phase, counts in counter.phase_counts.items()}

    def tracked(path: str) -> bool:
        name = f"{root}.{path}" if path else root
        return any(name in counts for counts in counter.phase_counts.values())

    def module_flops(phase: str, path: str, module: nn.Module) -> int:
        """The module's own count; a module never entered with FLOPs (a ModuleList whose children are
        called by the parent) gets the sum of its children."""
        if tracked(path) or not any(True for _ in module.children()):
            return sum(counter.phase_counts[phase].get(f"{root}.{path}" if path else root, {}).values())
        return sum(module_flops(phase, f"{path}.{name}" if path else name, child)
                   for name, child in module.named_children())

    modules = []
    for path, module in model.named_modules():
        level = 0 if path == "" else path.count(".") + 1
        if level <= depth:
            modules.append({"name": path or "(root)", "type": type(module).__name__, "depth": level,
                            "forward_flops": module_flops("forward", path, module),
                            "backward_flops": module_flops("backward", path, module),
                            "summed_from_children": not tracked(path) and any(True for _ in module.children())})
    outside = {phase: phase_totals[phase] - module_flops(phase, "", model) for phase in phase_totals}

    by_op: dict[str, dict[str, int]] = defaultdict(lambda: {"forward_flops": 0, "backward_flops": 0})
    for phase, counts in counter.phase_counts.items():
        for op, flops in counts["Global"].items():
            by_op[str(op)][f"{phase}_flops"] += flops

    uncounted: dict[str, int] = defaultdict(int)
    rules: dict[str, str] = {}
    for phase_calls in counter.uncounted_calls.values():
        for op, calls in phase_calls.items():
            uncounted[str(op)] += calls
            rules[str(op)] = rule_for(op).name
    unsupported = {op: n for op, n in uncounted.items() if not next(r for r in OP_RULES if r.name == rules[op]).ignored}
    return {
        "forward_flops": phase_totals["forward"],
        "backward_flops": phase_totals["backward"],
        "outside_model_flops": outside,
        "flops_by_op": dict(sorted(by_op.items(), key=lambda kv: -(kv[1]["forward_flops"] + kv[1]["backward_flops"]))),
        "modules": modules,
        "uncounted_ops": dict(sorted(uncounted.items(), key=lambda kv: (-kv[1], kv[0]))),
        "uncounted_op_rules": dict(sorted(rules.items())),
        "unsupported_ops": dict(sorted(unsupported.items(), key=lambda kv: (-kv[1], kv[0]))),
        "op_rules": {r.name: r.text for r in OP_RULES},
    }



def step_flops(counter: StepFlopCounter, model: nn.Module, precision_name: str, optimizer: str,
               depth: int = 2) -> dict[str, Any]:
    """FLOPs and bytes moved per phase of one training step, from a finished counter (see count_step)."""
    data = summarise(counter, model, depth)
    parameters = _unique_parameters(model)
    trainable_elements = sum(p.numel() for p in parameters if p.requires_grad)
    floating_parameter_elements = sum(p.numel() for p in parameters if p.is_floating_point())
    precision = PRECISIONS[precision_name]
    bytes_moved = {
        "forward": phase_bytes(counter.traffic["forward"], precision, floating_parameter_elements),
        "backward": phase_bytes(counter.traffic["backward"], precision, floating_parameter_elements),
        "optimizer": optimizer_step_bytes(trainable_elements, optimizer, precision.parameter_bytes),
    }
    result: dict[str, Any] = {"precision": precision_name, "optimizer": optimizer,
                              "forward_flops": data.pop("forward_flops"), "backward_flops": data.pop("backward_flops")}
    result["step_flops"] = result["forward_flops"] + result["backward_flops"]
    result["optimizer_flops"] = optimizer_step_flops(trainable_elements, optimizer)
    result["trainable_parameters"] = trainable_elements
    result["data_dependent_reads"] = counter.scalar_reads.reads
    result["attention_kernels"] = dict(counter.attention_kernels)
    result["attention_kernels_of"] = counter.kernels_of
    result["bytes_moved"] = bytes_moved
    result["depth"] = depth
    result.update(data)
    return result
