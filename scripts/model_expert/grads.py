"""Gradient health: N sampled forward/backward passes in train mode, measured, then judged.

What is measured per batch (fresh inputs each: `session.build_inputs(seed=i)`):
  - every parameter's gradient norm (`torch._foreach_norm`, one host transfer per batch),
    and the global norm;
  - every module's output: min and max (`amin`/`amax`) -> max |activation| and
    whether it went non-finite; under a --precision other than fp32 also the fp16 underflow count;
  - for ReLU-family modules, which units were ever active.
What is judged (the rules are the constants and registries below, each with its reason):
findings {severity, kind, where, message, value}; `stability` is the worst severity found
(RISK > CAUTION > STABLE; INFO never raises it).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
from torch import nn

from . import cli, render
from .errors import UserError
from .guard import preserved
from .inputs import ModelInputs
from .memory.step import PRECISIONS, cast_inputs
from .model_copy import copy_model
from .probe.update_ratio import HEALTHY_LOG10
from .target import read_config_section
from .runner import call_model, compute_loss, floating_leaves, run_backward

# --- constants and their sources -------------------------------------------------------------
FP16_MAX = float(torch.finfo(torch.float16).max)            # 65504: larger activations overflow to inf in fp16
FP16_MIN_NORMAL = float(torch.finfo(torch.float16).tiny)    # 6.1035e-05: below this fp16 loses precision (subnormal)
TRANSFORMER_RULE_CLIP_NORM = 1.0   # the transformer clipping rule: "For transformers: clip by global norm to 1.0"
CLIP_PERCENTILE = 90.0         # suggested clip = this percentile of the sampled global norms of a stable run
CLIP_RULE = (f"suggested_clip_norm = the {CLIP_PERCENTILE:g}th percentile (linear interpolation) of the global "
             f"gradient norms over the sampled steps, to 2 significant digits, and only when the run is stable (every "
             f"norm finite, no exploding gradient): ordinary steps pass unclipped, only spikes above the measured "
             f"spread are cut back. When gradients explode there is no suggestion: clipping would hide the cause")

# Vanishing/exploding with depth: decades (log10) the gradient norm falls (or grows) from the layers
# nearest the output to those nearest the input (`_depth_decades`). Clean controls measured within
# 0.3-1.0 decades (MLP, nn.TransformerEncoder, GPT-2, BERT at init); the planted stacks 20+.
DEPTH_DECADES = {"RISK": 4.0, "CAUTION": 2.0}
# Per layer, judged by what the optimizer does with the gradient: the size of one update |dw| / |w| at the
# training's optimizer and LR (`simulated_updates`: Adam/AdamW's bias-corrected moments over the sampled
# gradients, as torch.optim computes them; SGD lr x g). Healthy band: about 1e-3 per step, a decade either side
# (probe.update_ratio.HEALTHY_LOG10, CS231n). Adam divides by sqrt(v): a small gradient still moves the layer by
# about lr per element unless it is below Adam's eps (1e-8), so grad/param alone is not a vanishing gradient.
# Tiny: two decades below the band (1e-6) CAUTION; below 1e-8 RISK: the update is under fp32's relative
# resolution (1.2e-7 at 1.0) and rounds away.
TINY_UPDATE_RATIO = {"RISK": 1e-8, "CAUTION": 1e-6}
# Large: one update moves the layer by >= 10 % (a decade above the band: CAUTION) or >= 100 % of its norm (RISK).
LARGE_UPDATE_RATIO = {"RISK": 1.0, "CAUTION": 0.1}
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8     # torch.optim.Adam/AdamW defaults
SGD_MOMENTUM = 0.9                             # --optimizer sgd-momentum (as probe's OPTIMIZERS)
TORCH_DEFAULT_LR = 1e-3                        # torch.optim.Adam/AdamW/SGD's lr default (torch 2.x)
# Unscaled inputs: a floating input whose largest magnitude passes this is not standardised (mean 0, std 1
# puts 99.99 % of a normal sample within 4); named as the cause of an explosion.
UNSCALED_INPUT_MAX_ABS = 10.0
# Global norm per batch: clean controls measured 1-5 (mean-reduced losses).
EXPLODING_GLOBAL_NORM = {"RISK": 1e4, "CAUTION": 1e3}
# Dead units: fraction of a ReLU layer's units never active in any sample of any batch; judged only when the
# same units are dead after the first half of the batches and after all of them (a set that still shrinks is
# a sampling artefact, e.g. few synthetic samples at initialisation), and over at least DEAD_MIN_SAMPLES samples.
DEAD_FRACTION = {"RISK": 0.5, "CAUTION": 0.1}
DEAD_MIN_SAMPLES = 16
PROBE_LIMIT = 16               # modules probed for detached-vs-unused (the rest: reported as not probed)
RECENT_OUTPUTS = 4             # outputs remembered to spot a container returning a child's tensor
FINDINGS_PER_KIND = 8          # beyond this, one summary finding per kind and severity

OPTIMIZER_CHOICES = ("adamw", "adam", "sgd", "sgd-momentum")
ADAM_FAMILY = ("adamw", "adam")
SEVERITY_RANK = {"INFO": 0, "CAUTION": 1, "RISK": 2}
STABILITY_RULE = "RISK if any finding is RISK, else CAUTION if any is CAUTION, else STABLE (INFO findings never count)"

@dataclass(frozen=True)
class ActivationRule:
    """How a ReLU-family module's unit counts as active, and how bad a never-active unit is."""
    active_when: str
    dead_severity_cap: str  # the worst severity a dead unit of this kind can earn
    reason: str


_RELU = ActivationRule("output > 0", "RISK", "output exactly 0 in every sample: the weights feeding these units got no "
                       "gradient through them, so no optimizer step can revive them")
_SOFT = ActivationRule("output > 0", "INFO", "never positive, but the negative side still passes a (small) gradient")
# Keyed by class name so Hugging Face's activation classes match without importing transformers.
ACTIVATION_RULES: dict[str, ActivationRule] = {
    "ReLU": _RELU, "ReLU6": _RELU,
    "LeakyReLU": _SOFT, "GELU": _SOFT, "SiLU": _SOFT, "Mish": _SOFT, "ELU": _SOFT,
    "GELUActivation": _SOFT, "NewGELUActivation": _SOFT, "FastGELUActivation": _SOFT,
    "QuickGELUActivation": _SOFT, "GELUTanh": _SOFT, "PytorchGELUTanh": _SOFT, "SiLUActivation": _SOFT,
}
DEAD_UNITS_SCOPE = ("activation modules whose class is one of " + ", ".join(ACTIVATION_RULES) + "; functional calls "
                    "(F.relu, F.gelu, nn.TransformerEncoderLayer(activation='gelu')) run inside another module's "
                    "forward and are not seen")
# Modules whose 3-D output is channels-first (B, C, L): a following activation's unit is dim 1.
CHANNELS_FIRST_TYPES = (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d, nn.InstanceNorm1d, nn.MaxPool1d, nn.AvgPool1d)

# Why a parameter got no gradient -> (severity, explanation). `grads` decides the cause.
NO_GRADIENT_CAUSES: dict[str, tuple[str, str]] = {
    "frozen": ("INFO", "requires_grad is False: frozen on purpose (not a gradient-flow problem)"),
    "unused": ("CAUTION", "its module never ran in forward: dead code or a missing call; it still costs memory "
                          "and optimizer state"),
    "detached": ("RISK", "its module ran and its values change the loss, yet no gradient reached it: the graph is "
                         "cut (.detach(), torch.no_grad(), .item()/.numpy() round trip, or an integer cast)"),
    "output_unused": ("INFO", "its module ran but its values do not change the loss (e.g. a pooler beside an "
                              "MLM head): it gets no gradient by design and only costs compute"),
    "no_gradient": ("CAUTION", "its module ran but got no gradient; whether its output feeds the loss could not be "
                               "probed (see message)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    cli.add_model_arguments(parser)
    cli.add_input_arguments(parser)
    group = parser.add_argument_group("gradient sampling")
    group.add_argument("--loss", metavar="FILE.py:FN",
                       help="FN(output) or FN(output, batch) returns the scalar to backpropagate (default: output.loss, else the mean of floating outputs)")
    group.add_argument("--batches", type=int, default=3, metavar="N",
                       help="forward/backward passes to sample, each on fresh inputs (seed 0..N-1; default: 3)")
    group.add_argument("--optimizer", choices=cli.OPTIMIZERS, default="adamw",
                       help="the optimizer whose update size judges vanishing/exploding layers (default: adamw)")
    group.add_argument("--lr", type=float, metavar="X",
                       help=f"the learning rate of that update (default: lr/learning_rate in the --config section, "
                            f"else torch.optim's default {TORCH_DEFAULT_LR:g})")
    group.add_argument("--precision", choices=cli.PRECISIONS, default="fp32",
                       help="bf16/fp16: a copy of the model and the floating inputs cast (pure low-precision training); "
                            "*-autocast: under torch.autocast; both show fp16 overflow/underflow (default: fp32)")
    group.add_argument("--group", action="append", default=[], metavar="NAME=PREFIX",
                       help="a named parameter group (parameters whose name starts with PREFIX); reports whether it "
                            "gets gradient, e.g. --group model_path=model_proj (repeatable)")
    cli.add_output_arguments(parser)


# --- pure formulas ---------------------------------------------------------------------------

def root_sum_square(values: list[float]) -> float:
    """sqrt(sum v^2): the norm of a set of tensors from their norms."""
    return math.sqrt(sum(v * v for v in values))


def ratio_or_none(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0 or not math.isfinite(denominator):
        return None
    return numerator / denominator


def decades(high: float, low: float) -> float:
    """log10(high / low); inf when low is 0 and high is not."""
    if low <= 0:
        return math.inf if high > 0 else 0.0
    return math.log10(high / low) if high > 0 else -math.inf


def two_significant(value: float) -> float:
    """Round to 2 significant digits (0.01234 -> 0.012)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, 1 - int(math.floor(math.log10(abs(value)))))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of VALUES by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def suggested_clip_norm(global_norms: list[float]) -> float | None:
    """CLIP_PERCENTILE-th percentile of the observed global norms; None if any is not finite (not a stable run)."""
    if not global_norms or not all(math.isfinite(n) for n in global_norms):
        return None
    return two_significant(percentile(global_norms, CLIP_PERCENTILE))


def adam_update(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, step: int, lr: float) -> torch.Tensor:
    """lr x m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t): Adam's update (torch.optim.Adam)."""
    beta1, beta2 = ADAM_BETAS
    m_hat = exp_avg / (1 - beta1 ** step)
    v_hat = exp_avg_sq / (1 - beta2 ** step)
    return lr * m_hat / (v_hat.sqrt() + ADAM_EPS)


def grade(value: float, thresholds: dict[str, float], above: bool = True) -> str | None:
    """The worst severity whose threshold `value` passes (above: value >= t; else value <= t)."""
    for severity in ("RISK", "CAUTION"):
        limit = thresholds[severity]
        if (value >= limit) if above else (value <= limit):
            return severity
    return None


def stability(findings: list[dict[str, Any]]) -> str:
    """STABILITY_RULE."""
    worst = max((SEVERITY_RANK[f["severity"]] for f in findings), default=0)
    return {2: "RISK", 1: "CAUTION", 0: "STABLE"}[worst]


def parse_groups(texts: list[str]) -> dict[str, str]:
    groups: dict[str, str] = {}
    for text in texts:
        name, sep, prefix = text.partition("=")
        if not sep or not name.strip() or not prefix.strip():
            raise UserError(f"bad --group '{text}'; write NAME=PREFIX, e.g. --group model_path=model_proj")
        if name in groups:
            raise UserError(f"--group name '{name}' is given twice; give each group once")
        groups[name.strip()] = prefix.strip()
    return groups


# --- the per-batch probe: forward hooks, tensors only, one host transfer per batch ------------

def _unit_dim(ndim: int, previous: nn.Module | None) -> int:
    """The dim that indexes units: channels (dim 1) for 4-D/5-D maps and for 3-D outputs after a
    channels-first module (Conv1d, BatchNorm1d, ...); otherwise the last dim ((B, T, C), (B, C))."""
    if ndim >= 4 or (ndim == 3 and isinstance(previous, CHANNELS_FIRST_TYPES)):
        return 1
    return ndim - 1


@dataclass
class _DeadUnitTracker:
    rule: ActivationRule
    type_name: str
    ever_active: torch.Tensor | None = None   # bool (units,), OR over every call of every batch
    observations_per_unit: int = 0            # samples x positions seen per unit
    calls: int = 0
    shape_changes: int = 0                    # calls whose unit count differed (not merged)
    ever_active_half: torch.Tensor | None = None   # ever_active after the first half of the batches
    samples_half: int = 0


class ForwardProbe:
    """Forward hooks on every module: output min/max (and fp16 underflow), call order, units."""

    def __init__(self, model: nn.Module, count_underflow: bool):
        self.count_underflow = count_underflow
        self.names: dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        self.first_call_order: list[str] = []       # entry order of modules in batch 0
        self.ran: set[str] = set()
        self.dead: dict[str, _DeadUnitTracker] = {name: _DeadUnitTracker(ACTIVATION_RULES[type(m).__name__],
                                                                           type(m).__name__)
                                                  for m, name in self.names.items()
                                                  if type(m).__name__ in ACTIVATION_RULES}
        self._calls: list[str] = []                 # module name per recorded stats row, this batch
        self._stats: list[torch.Tensor] = []        # per row: [min, max, underflow_count, numel]
        self._previous: nn.Module | None = None
        self._record_order = True
        self.numel_by_row: list[int] = []
        self._recent: list[tuple[torch.Tensor, torch.Tensor]] = []   # last outputs seen (references, this batch)

    @contextlib.contextmanager
    def attached(self) -> Iterator["ForwardProbe"]:
        handles = []
        try:
            for module, name in self.names.items():
                handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
                handles.append(module.register_forward_hook(self._post_hook(name)))
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def _pre_hook(self, name: str) -> Callable:
        def hook(module, args):
            if self._record_order and name not in self.ran:
                self.first_call_order.append(name)
            self.ran.add(name)
        return hook

    def _post_hook(self, name: str) -> Callable:
        def hook(module, args, output):
            leaves = [t for t in floating_leaves(output) if t.numel() > 0]
            for tensor in leaves:
                self._stats.append(self._tensor_stats(tensor))
                self._calls.append(name)
                self.numel_by_row.append(tensor.numel())
            tracker = self.dead.get(name)
            if tracker is not None and leaves:
                self._track_units(tracker, leaves[0].detach())
            self._previous = module
        return hook

    def _tensor_stats(self, tensor: torch.Tensor) -> torch.Tensor:
        """[min, max(, fp16 underflow count)] of one output. A container that returns its last
        child's tensor (Sequential, an encoder stack) reuses that child's row instead of re-reading it."""
        for seen, row in self._recent:
            if seen is tensor:
                return row
        value = tensor.detach()
        # amin and amax separately: both propagate NaN, and on CPU the pair is ~15x faster than
        # torch.aminmax (measured 0.23 ms vs 3.4 ms on 0.5M floats, torch 2.13).
        parts = [value.amin().float(), value.amax().float()]
        if self.count_underflow:
            magnitude = value.abs()
            parts.append(((magnitude < FP16_MIN_NORMAL) & (magnitude > 0)).sum().float())
        row = torch.stack(parts)
        self._recent = [(tensor, row), *self._recent[:RECENT_OUTPUTS - 1]]
        return row

    def _track_units(self, tracker: _DeadUnitTracker, value: torch.Tensor) -> None:
        tracker.calls += 1
        if value.ndim == 0:
            tracker.shape_changes += 1
            return
        unit = _unit_dim(value.ndim, self._previous)
        others = tuple(d for d in range(value.ndim) if d != unit)
        active = (value.amax(dim=others) if others else value) > 0          # (units,)
        if tracker.ever_active is None:
            tracker.ever_active = active
        elif tracker.ever_active.shape == active.shape:
            tracker.ever_active = tracker.ever_active | active
        else:
            tracker.shape_changes += 1
            return
        tracker.observations_per_unit += value.numel() // max(value.shape[unit], 1)

    def snapshot_half(self, samples: int) -> None:
        """Remember which units were active in the first half of the batches (dead units are judged stable
        only when the second half revives none)."""
        for tracker in self.dead.values():
            tracker.ever_active_half = None if tracker.ever_active is None else tracker.ever_active.clone()
            tracker.samples_half = samples

    def start_batch(self, index: int) -> None:
        self._record_order = index == 0
        self._calls, self._stats, self.numel_by_row = [], [], []
        self._previous = None
        self._recent = []

    def batch_stats(self) -> tuple[list[str], list[int], torch.Tensor | None]:
        if not self._stats:
            return self._calls, self.numel_by_row, None
        return self._calls, self.numel_by_row, torch.stack(self._stats)


# --- the sampling loop -----------------------------------------------------------------------

@dataclass
class BatchRecord:
    grad_norms: dict[int, float]                  # parameter index -> norm (absent: grad None)
    global_norm: float
    loss: float
    module_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    first_non_finite_module: str | None = None


def unique_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every parameter once, under its first name (tied weights share one entry)."""
    return list(model.named_parameters())


def gradient_norms(parameters: list[nn.Parameter]) -> tuple[list[int], list[torch.Tensor]]:
    """Indices of parameters holding a gradient, and their norms as 0-d float tensors (no sync)."""
    dense, sparse = [], []
    for index, parameter in enumerate(parameters):
        grad = parameter.grad
        if grad is None:
            continue
        (sparse if grad.is_sparse else dense).append(index)
    norms = list(torch._foreach_norm([parameters[i].grad for i in dense])) if dense else []
    norms += [parameters[i].grad.coalesce()._values().norm() for i in sparse]
    norms = [n.float() for n in norms]
    return dense + sparse, norms


class UpdateSimulator:
    """What the optimizer would do with the sampled gradients, from the initial weights (nothing is stepped):
    Adam/AdamW keep torch.optim's exp_avg/exp_avg_sq over the batches and the update is that of the last step;
    SGD's update is lr x g of each batch (the mean of their norms); SGD with momentum lr x its buffer.
    Decoupled weight decay (AdamW's lr x wd x w, 1e-5 of |w| at lr 1e-3, wd 1e-2) is left out: it shrinks weights
    whatever the gradient, so it says nothing about gradient flow."""

    def __init__(self, parameters: list[nn.Parameter], optimizer: str, lr: float):
        self.parameters, self.optimizer, self.lr = parameters, optimizer, lr
        self.state: dict[int, list] = {}                 # index -> [steps, exp_avg / momentum buffer, exp_avg_sq]
        self.sgd_norm_sums: dict[int, float] = {}

    def observe(self, indices: list[int], norms: list[float]) -> None:
        """One batch's gradients (the parameters' .grad), as the optimizer's step would read them."""
        with torch.no_grad():
            for index, norm in zip(indices, norms):
                grad = self.parameters[index].grad
                if grad.is_sparse:
                    grad = grad.to_dense()
                grad = grad.float()
                entry = self.state.get(index)
                if self.optimizer in ADAM_FAMILY:
                    beta1, beta2 = ADAM_BETAS
                    if entry is None:
                        entry = self.state[index] = [0, torch.zeros_like(grad), torch.zeros_like(grad)]
                    entry[0] += 1
                    entry[1].mul_(beta1).add_(grad, alpha=1 - beta1)
                    entry[2].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                elif self.optimizer == "sgd-momentum":
                    if entry is None:
                        entry = self.state[index] = [0, grad.clone(), None]  # torch: buf = g at the first step
                    else:
                        entry[1].mul_(SGD_MOMENTUM).add_(grad)
                    entry[0] += 1
                else:
                    if entry is None:
                        entry = self.state[index] = [0, None, None]
                    entry[0] += 1
                    self.sgd_norm_sums[index] = self.sgd_norm_sums.get(index, 0.0) + norm

    def update_norms(self) -> dict[int, float]:
        """parameter index -> |dw| of one update (Frobenius norm), for every parameter that got a gradient."""
        result = {}
        with torch.no_grad():
            for index, (steps, first, second) in self.state.items():
                if self.optimizer in ADAM_FAMILY:
                    value = float(torch.linalg.vector_norm(adam_update(first, second, steps, self.lr)))
                elif self.optimizer == "sgd-momentum":
                    value = self.lr * float(torch.linalg.vector_norm(first))
                else:
                    value = self.lr * self.sgd_norm_sums[index] / steps
                result[index] = value
        return result

    def describe(self) -> str:
        if self.optimizer in ADAM_FAMILY:
            return (f"{self.optimizer} at lr {self.lr:g}: the update of the last sampled step, lr x m_hat / (sqrt(v_hat) + "
                    f"eps) from the moments of the sampled gradients (betas {ADAM_BETAS}, eps {ADAM_EPS:g}); Adam scales "
                    f"each element by its own gradient size, so a small gradient still moves a layer by about lr per "
                    f"element unless it is below eps")
        if self.optimizer == "sgd-momentum":
            return (f"sgd-momentum at lr {self.lr:g}: lr x the momentum buffer ({SGD_MOMENTUM:g}) after the sampled steps")
        return f"sgd at lr {self.lr:g}: lr x the gradient, mean over the sampled steps"


def _stack_on(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if all(t.device == device for t in tensors):
        return torch.stack(tensors)
    return torch.stack([t.to(device) for t in tensors])


def run_batch(model: nn.Module, parameters: list[nn.Parameter], inputs: ModelInputs, loss_fn, probe: ForwardProbe,
              autocast_dtype: torch.dtype | None, device_type: str, model_name: str,
              updates: UpdateSimulator | None = None) -> BatchRecord:
    """One sampled step: forward (+ loss) under the probe, backward, norms gathered with one transfer."""
    for parameter in parameters:
        parameter.grad = None
    autocast = (torch.autocast(device_type=device_type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        output = call_model(model, inputs, model_name)
        loss = compute_loss(loss_fn, output, batch=inputs.batch)
    run_backward(loss, model_name)

    indices, norms = gradient_norms(parameters)
    calls, numels, stats = probe.batch_stats()
    device = loss.device
    pieces = [loss.detach().float().reshape(1)]
    if norms:
        norm_vector = _stack_on(norms, device)
        pieces += [torch.linalg.vector_norm(norm_vector).reshape(1), norm_vector]
    else:
        pieces += [torch.zeros(1, device=device)]
    if stats is not None:
        pieces.append(stats.to(device).flatten())
    values = torch.cat(pieces).tolist()                          # the one host transfer of this batch
    loss_value, global_norm = values[0], values[1]
    grad_values = values[2:2 + len(norms)]
    record = BatchRecord(grad_norms=dict(zip(indices, grad_values)), global_norm=global_norm, loss=loss_value)
    if updates is not None:
        updates.observe(indices, grad_values)
    width = 3 if probe.count_underflow else 2
    flat = values[2 + len(norms):]
    for row, name in enumerate(calls):
        low, high = flat[row * width], flat[row * width + 1]
        entry = record.module_stats.setdefault(name, {"max_abs": 0.0, "underflow": 0.0 if width == 3 else None,
                                                      "numel": 0, "finite": True})
        finite = math.isfinite(low) and math.isfinite(high)
        if not finite and entry["finite"] and record.first_non_finite_module is None:
            record.first_non_finite_module = name
        entry["finite"] = entry["finite"] and finite
        entry["max_abs"] = max(entry["max_abs"], abs(low), abs(high)) if finite else math.inf
        entry["numel"] += numels[row]
        if width == 3:
            entry["underflow"] += flat[row * width + 2]
    return record


def parameters_change_loss(model: nn.Module, parameters: list[nn.Parameter], inputs: ModelInputs, loss_fn,
                           model_name: str) -> bool | None:
    """Does adding noise to PARAMETERS change the loss? Same RNG seed for both forwards (dropout alike);
    the values are put back at once (and the caller's guard checks them). None: the loss is not finite."""
    generator = torch.Generator().manual_seed(1234)
    originals = [p.detach().clone() for p in parameters]
    losses = []
    try:
        with torch.no_grad():
            for perturb in (False, True):
                if perturb:
                    for parameter in parameters:
                        noise = torch.randn(parameter.shape, generator=generator).to(parameter.device, parameter.dtype)
                        spread = parameter.detach().float().std().nan_to_num(0.0) + 1.0 if parameter.numel() > 1 else 1.0
                        parameter.add_(noise * spread)
                torch.manual_seed(0)
                losses.append(compute_loss(loss_fn, call_model(model, inputs, model_name), batch=inputs.batch).detach().float())
    finally:
        with torch.no_grad():
            for parameter, original in zip(parameters, originals):
                parameter.copy_(original)
    if not all(bool(torch.isfinite(v)) for v in losses):
        return None
    return not torch.equal(losses[0], losses[1])


# --- analysis --------------------------------------------------------------------------------

def _owner_name(parameter_name: str) -> str:
    return parameter_name.rpartition(".")[0]


def _finding(severity: str, kind: str, where: str, message: str, value: Any = None) -> dict[str, Any]:
    return {"severity": severity, "kind": kind, "where": where, "message": message, "value": value}


def _limit_findings(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep FINDINGS_PER_KIND per (kind, severity); fold the rest into one summary finding."""
    kept, overflow = [], {}
    counts: dict[tuple[str, str], int] = {}
    for finding in findings:
        key = (finding["kind"], finding["severity"])
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= FINDINGS_PER_KIND:
            kept.append(finding)
        else:
            overflow.setdefault(key, []).append(finding["where"])
    for (kind, severity), wheres in overflow.items():
        kept.append(_finding(severity, kind, f"{len(wheres)} more", f"{len(wheres)} more of kind {kind}: "
                             + ", ".join(wheres[:5]) + (" ..." if len(wheres) > 5 else ""), len(wheres)))
    kept.sort(key=lambda f: -SEVERITY_RANK[f["severity"]])
    return kept


def input_ranges(inputs: ModelInputs, forward: Callable | None = None) -> dict[str, list[float]]:
    """Floating input name -> [min, max] of this batch (names as ModelInputs.describe gives them)."""
    from .inputs import positional_names
    names = positional_names(forward) if forward is not None else []
    ranges = {}
    values = [(names[i] if i < len(names) else f"args[{i}]", v) for i, v in enumerate(inputs.args)]
    values += list(inputs.kwargs.items())
    for label, value in values:
        for position, tensor in enumerate(floating_leaves(value)):
            if tensor.numel() == 0 or tensor.device.type == "meta":
                continue
            key = label if position == 0 else f"{label}[{position}]"
            ranges[key] = [float(tensor.detach().amin()), float(tensor.detach().amax())]
    return ranges


def _merge_ranges(into: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for key, (low, high) in more.items():
        if key in into:
            into[key] = [min(into[key][0], low), max(into[key][1], high)]
        else:
            into[key] = [low, high]


def _batch_samples(inputs: ModelInputs) -> int:
    """Samples in one batch: the leading dim of the first tensor input (1 for an unbatched tensor)."""
    for value in list(inputs.args) + list(inputs.kwargs.values()):
        if isinstance(value, torch.Tensor):
            return int(value.shape[0]) if value.ndim else 1
    return 1


def analyse_model(model: nn.Module, build_inputs: Callable[[int], ModelInputs], loss_fn=None, batches: int = 3,
                  precision: str = "fp32", groups: dict[str, str] | None = None,
                  model_name: str = "the model", optimizer: str = "adamw", lr: float | None = None,
                  lr_source: str | None = None, synthetic: bool = True) -> dict[str, Any]:
    """Sample BATCHES steps of MODEL (inside `preserved`: the model is restored afterwards) and judge them."""
    if batches < 1:
        raise UserError(f"--batches must be 1 or more, not {batches}")
    if optimizer not in OPTIMIZER_CHOICES:
        raise UserError(f"unknown optimizer '{optimizer}' for grads; expected one of {', '.join(OPTIMIZER_CHOICES)}")
    if lr is None:
        lr, lr_source = TORCH_DEFAULT_LR, lr_source or f"torch.optim's default for {optimizer}"
    if not (lr > 0 and math.isfinite(lr)):
        raise UserError(f"--lr must be a positive number, not {lr:g}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown --precision '{precision}' for grads; expected one of {', '.join(PRECISIONS)}")
    groups = groups or {}
    if any(p.device.type == "meta" for _, p in unique_parameters(model)):
        raise UserError("grads needs real values to measure gradients; run with --device cpu (or cuda), not meta")
    rule = PRECISIONS[precision]
    if rule.param_dtype is not None:  # pure bf16/fp16 training: a cast copy; the user's model keeps its dtype
        model = copy_model(model).to(rule.param_dtype)
        build_fp32_inputs = build_inputs

        def build_inputs(seed: int) -> ModelInputs:
            return cast_inputs(build_fp32_inputs(seed), rule.param_dtype)
    named = unique_parameters(model)
    names = [n for n, _ in named]
    parameters = [p for _, p in named]
    for group_name, prefix in groups.items():
        if not any(n.startswith(prefix) for n in names):
            tops = sorted({n.split(".")[0] for n in names})
            raise UserError(f"--group {group_name}={prefix}: no parameter name starts with '{prefix}'; "
                            f"top-level names are {', '.join(tops[:12])}")
    autocast_dtype = rule.autocast_dtype
    device_type = parameters[0].device.type if parameters else "cpu"

    updates = UpdateSimulator(parameters, optimizer, lr)
    ranges: dict[str, list[float]] = {}
    samples = 0
    with preserved(model):
        model.train()
        probe = ForwardProbe(model, count_underflow=precision != "fp32")
        records: list[BatchRecord] = []
        with torch.no_grad():
            parameter_norms = ([float(v) for v in torch.stack([n.float() for n in torch._foreach_norm(
                [p.detach() for p in parameters])]).tolist()] if parameters else [])
        with probe.attached():
            for index in range(batches):
                if index == (batches + 1) // 2:
                    probe.snapshot_half(samples)
                probe.start_batch(index)
                inputs = build_inputs(index)
                _merge_ranges(ranges, input_ranges(inputs, getattr(model, "forward", None)))
                samples += _batch_samples(inputs)
                torch.manual_seed(index)  # dropout masks repeat from run to run (the guard restores the RNG)
                records.append(run_batch(model, parameters, inputs, loss_fn, probe,
                                         autocast_dtype, device_type, model_name, updates))
        causes = _no_gradient_causes(model, named, records, probe, build_inputs, loss_fn, model_name)
    context = {"optimizer": optimizer, "lr": lr, "lr_source": lr_source, "update_rule": updates.describe(),
               "update_norms": updates.update_norms(), "input_ranges": ranges, "samples": samples,
               "synthetic": synthetic}
    return _summarise(model, named, parameter_norms, records, probe, causes, groups, precision, batches, context)


def _no_gradient_causes(model, named, records, probe, build_inputs, loss_fn, model_name) -> dict[str, tuple[str, str]]:
    """parameter name -> (cause, note) for every parameter that got no gradient in any batch.
    frozen: requires_grad False. unused: its module never ran. Otherwise its module ran, and the
    parameters of that module are perturbed together: the loss changes -> detached, it does not ->
    output_unused (one extra no-grad forward pair per module, at most PROBE_LIMIT modules)."""
    causes: dict[str, tuple[str, str]] = {}
    to_probe: dict[str, list[int]] = {}
    for index, (name, parameter) in enumerate(named):
        if any(index in r.grad_norms for r in records):
            continue
        owner = _owner_name(name)
        if not parameter.requires_grad:
            causes[name] = ("frozen", "")
        elif owner not in probe.ran:
            causes[name] = ("unused", "")
        else:
            to_probe.setdefault(owner, []).append(index)
    for count, (owner, indices) in enumerate(to_probe.items()):
        if count >= PROBE_LIMIT:
            answer = ("no_gradient", f"not probed: more than {PROBE_LIMIT} modules got no gradient")
        else:
            changes = parameters_change_loss(model, [named[i][1] for i in indices], build_inputs(0), loss_fn, model_name)
            answer = (("no_gradient", "the loss was not finite, so perturbing the parameters could not tell")
                      if changes is None else ("detached", "") if changes else ("output_unused", ""))
        for index in indices:
            causes[named[index][0]] = answer
    return causes


def _forward_position(name: str, order: dict[str, int]) -> tuple[int, int]:
    """A module's place in forward order; one that never ran sits right after its nearest ancestor that did."""
    probe_name = name
    while True:
        if probe_name in order:
            return (order[probe_name], 0 if probe_name == name else 1)
        if probe_name == "":
            return (len(order), 1)
        probe_name = probe_name.rpartition(".")[0]


def _summarise(model, named, parameter_norms, records, probe, causes, groups, precision, batches,
               context: dict[str, Any]) -> dict[str, Any]:
    order = {name: i for i, name in enumerate(probe.first_call_order)}
    module_types = {name: type(m).__name__ for name, m in model.named_modules()}
    findings: list[dict[str, Any]] = []

    # Per parameter.
    parameter_rows = []
    for index, (name, parameter) in enumerate(named):
        seen = [r.grad_norms[index] for r in records if index in r.grad_norms]
        finite = [v for v in seen if math.isfinite(v)]
        mean = statistics.fmean(seen) if seen else None
        row = {"name": name, "module": _owner_name(name), "shape": list(parameter.shape), "numel": parameter.numel(),
               "requires_grad": parameter.requires_grad, "batches_with_grad": len(seen),
               "grad_norm_mean": mean, "grad_norm_max": max(seen) if seen else None,
               "param_norm": parameter_norms[index], "grad_to_param": ratio_or_none(mean, parameter_norms[index]),
               "update_norm": context["update_norms"].get(index),
               "update_to_param": ratio_or_none(context["update_norms"].get(index), parameter_norms[index]),
               "status": causes.get(name, ("ok", ""))[0], "non_finite_grad": len(finite) != len(seen)}
        parameter_rows.append(row)

    # Per module (own parameters: "layers"; subtree: "modules").
    own: dict[str, list[int]] = {}
    for index, (name, _) in enumerate(named):
        own.setdefault(_owner_name(name), []).append(index)

    def norms_per_batch(indices: list[int]) -> list[float | None]:
        result = []
        for record in records:
            present = [record.grad_norms[i] for i in indices if i in record.grad_norms]
            result.append(root_sum_square(present) if present else None)
        return result

    def stats_row(module_name: str, indices: list[int]) -> dict[str, Any]:
        per_batch = [v for v in norms_per_batch(indices) if v is not None]
        param_norm = root_sum_square([parameter_norms[i] for i in indices])
        mean = statistics.fmean(per_batch) if per_batch else None
        activation = _merge_activation([r.module_stats.get(module_name) for r in records])
        moved = [context["update_norms"][i] for i in indices if i in context["update_norms"]]
        update = root_sum_square(moved) if moved else None
        return {"name": module_name or "(root)", "type": module_types.get(module_name, "?"),
                "forward_index": order.get(module_name), "parameters": sum(named[i][1].numel() for i in indices),
                "grad_norm_mean": mean, "grad_norm_max": max(per_batch) if per_batch else None,
                "param_norm": param_norm, "grad_to_param": ratio_or_none(mean, param_norm),
                "update_norm": update, "update_to_param": ratio_or_none(update, param_norm), **activation}

    module_rows = []
    for module_name, module in model.named_modules():
        subtree = [i for i, (n, _) in enumerate(named) if module_name == "" or n.startswith(module_name + ".")]
        module_rows.append(stats_row(module_name, subtree))
    module_rows.sort(key=lambda r: _forward_position("" if r["name"] == "(root)" else r["name"], order))

    layer_names = sorted(own, key=lambda n: _forward_position(n, order))
    depth_profile = []
    for depth, layer in enumerate(layer_names):
        trainable = [i for i in own[layer] if named[i][1].requires_grad]
        if not trainable:
            continue
        row = stats_row(layer, trainable)
        depth_profile.append({"depth": len(depth_profile), "layer": row["name"], "type": row["type"],
                              "grad_norm_mean": row["grad_norm_mean"], "param_norm": row["param_norm"],
                              "grad_to_param": row["grad_to_param"], "update_to_param": row["update_to_param"],
                              "log10_grad_norm": (math.log10(row["grad_norm_mean"])
                                                  if row["grad_norm_mean"] and math.isfinite(row["grad_norm_mean"])
                                                  else None)})

    global_norms = [r.global_norm for r in records]
    findings += _non_finite_findings(records, parameter_rows)
    findings += _no_gradient_findings(parameter_rows, causes)
    findings += _vanishing_findings(depth_profile, context)
    cause = explosion_cause(context["input_ranges"], module_rows, model)
    findings += _exploding_findings(depth_profile, global_norms, context, cause)
    dead_units, dead_findings = _dead_units(probe, context)
    findings += dead_findings
    if precision != "fp32":
        findings += _precision_findings(module_rows, precision)
    findings = _limit_findings(findings)

    group_rows = {}
    for group_name, prefix in groups.items():
        members = [i for i, (n, _) in enumerate(named) if n.startswith(prefix)]
        trainable = [i for i in members if named[i][1].requires_grad]
        reached = [i for i in trainable if parameter_rows[i]["status"] == "ok"
                   and (parameter_rows[i]["grad_norm_max"] or 0) > 0]
        per_batch = [v for v in norms_per_batch(members) if v is not None]
        group_rows[group_name] = {"prefix": prefix, "parameters": len(members), "trainable": len(trainable),
                                  "parameters_reached": len(reached),
                                  "reached": bool(trainable) and len(reached) == len(trainable),
                                  "grad_norm": statistics.fmean(per_batch) if per_batch else None}
        if not group_rows[group_name]["reached"]:
            frozen = len(members) - len(trainable)
            missed = len(trainable) - len(reached)
            findings.append(_finding(
                "RISK", "group_not_reached", prefix,
                f"parameter group '{group_name}' (prefix '{prefix}') does not train: "
                + (f"{frozen} of its {len(members)} parameter tensors are frozen (requires_grad=False)"
                   + (" — all of them" if not trainable else "") if frozen else "")
                + ("; " if frozen and missed else "")
                + (f"{missed} of its {len(trainable)} trainable tensors got no gradient" if missed else ""),
                len(members) - len(reached)))
            findings[-1]["fix"] = (f"if '{group_name}' should train, set requires_grad=True on it (and give it to the "
                                   f"optimizer)" if frozen else "find where its path is cut (the no-gradient findings)")

    exploding = [f for f in findings if f["kind"] == "exploding_gradient" and f["severity"] != "INFO"]
    suggestion = None if exploding else suggested_clip_norm(global_norms)
    withheld = None
    if exploding:
        withheld = ("gradients explode (" + exploding[0]["message"] + "); clipping would only hide it: "
                    + (cause["fix"] if cause else "find the layer whose output grows (see modules' max |activation|)"))
    elif suggestion is None:
        withheld = "a sampled global norm was not finite: no stable run to take a percentile of"
    finite_norms = [n for n in global_norms if math.isfinite(n)]
    low_band, high_band = HEALTHY_LOG10
    return {
        "model": type(model).__name__,
        "batches": batches,
        "samples": context["samples"],
        "inputs": "synthetic" if context["synthetic"] else "--data",
        "precision": precision,
        "optimizer": context["optimizer"],
        "lr": context["lr"],
        "lr_source": context["lr_source"],
        "update_rule": context["update_rule"],
        "healthy_update_band": [10 ** low_band, 10 ** high_band],
        "input_ranges": context["input_ranges"],
        "explosion_cause": cause,
        "losses": [r.loss for r in records],
        "global_grad_norms": global_norms,
        "suggested_clip_norm": suggestion,
        "clip_withheld_reason": withheld,
        "clip_rule": CLIP_RULE,
        "transformer_rule_clip_norm": TRANSFORMER_RULE_CLIP_NORM,
        "batches_clipped_at_transformer_rule": sum(1 for n in finite_norms if n > TRANSFORMER_RULE_CLIP_NORM),
        "parameters": parameter_rows,
        "modules": module_rows,
        "depth_profile": depth_profile,
        "chart_axis_log10": chart_axis(depth_profile),
        "depth_decades": _depth_decades(depth_profile),
        "findings": findings,
        "groups": group_rows,
        "dead_units": dead_units,
        "dead_units_scope": DEAD_UNITS_SCOPE,
        "first_non_finite_module": next((r.first_non_finite_module for r in records if r.first_non_finite_module), None),
        "stability": stability(findings),
        "stability_rule": STABILITY_RULE,
    }


def _merge_activation(entries: list[dict[str, float] | None]) -> dict[str, Any]:
    present = [e for e in entries if e]
    if not present:
        return {"max_abs_activation": None, "output_finite": None, "underflow_fraction": None}
    numel = sum(e["numel"] for e in present)
    return {"max_abs_activation": max(e["max_abs"] for e in present),
            "output_finite": all(e["finite"] for e in present),
            "underflow_fraction": (sum(e["underflow"] for e in present) / numel
                                   if numel and present[0]["underflow"] is not None else None)}


def _depth_decades(profile: list[dict[str, Any]]) -> float | None:
    """log10(median grad norm of the last third of layers / of the first third), in forward order:
    > 0 the gradient falls toward the input, < 0 it grows; medians of thirds keep one small layer
    (a LayerNorm, a tied embedding) from deciding it. inf when the input side's gradient is exactly 0."""
    norms = [p["grad_norm_mean"] for p in profile if p["grad_norm_mean"] is not None and math.isfinite(p["grad_norm_mean"])]
    if len(norms) < 2:
        return None
    third = max(1, len(norms) // 3)
    return decades(statistics.median(norms[-third:]), statistics.median(norms[:third]))


def _non_finite_findings(records, parameter_rows) -> list[dict[str, Any]]:
    findings = []
    first = next((r.first_non_finite_module for r in records if r.first_non_finite_module is not None), None)
    if first is not None:
        bad = [i for i, r in enumerate(records) if r.first_non_finite_module is not None]
        findings.append(_finding("RISK", "non_finite_activation", first or "(root)",
                                 f"the output of '{first or '(root)'}' was the first to hold NaN/Inf in forward "
                                 f"(batches {bad}); look at its log/sqrt/division/exp, or at overflow under autocast", len(bad)))
    for row in parameter_rows:
        if row["non_finite_grad"]:
            findings.append(_finding("RISK", "non_finite_gradient", row["name"],
                                     f"gradient of {row['name']} holds NaN/Inf", row["grad_norm_max"]))
    return findings


def _no_gradient_findings(parameter_rows, causes) -> list[dict[str, Any]]:
    by_module: dict[tuple[str, str], list[str]] = {}
    notes: dict[tuple[str, str], str] = {}
    for row in parameter_rows:
        if row["name"] in causes:
            cause, note = causes[row["name"]]
            by_module.setdefault((row["module"] or "(root)", cause), []).append(row["name"])
            notes[(row["module"] or "(root)", cause)] = note
    findings = []
    for (module, cause), names in by_module.items():
        severity, why = NO_GRADIENT_CAUSES[cause]
        note = notes[(module, cause)]
        findings.append(_finding(severity, cause, module,
                                 f"{len(names)} parameter(s) of '{module}' got no gradient ({', '.join(names)}): "
                                 f"{why}{'; ' + note if note else ''}", len(names)))
    return findings


def _update_text(row: dict[str, Any], context: dict[str, Any]) -> str:
    low, high = HEALTHY_LOG10
    return (f"one {context['optimizer']} update at lr {context['lr']:g} moves '{row['layer']}' by |dw|/|w| = "
            f"{row['update_to_param']:.1e} (healthy band {10 ** low:g} to {10 ** high:g})")


def _vanishing_findings(profile, context) -> list[dict[str, Any]]:
    """Judged by the update the optimizer makes: under Adam a gradient that falls with depth is rescaled per
    element, so the fall is reported (INFO) and only a layer whose update is itself tiny is an alarm."""
    findings = []
    adam = context["optimizer"] in ADAM_FAMILY
    fall = _depth_decades(profile)
    if fall is not None:
        severity = grade(fall, DEPTH_DECADES)
        if severity:
            text = (f"the gradient is exactly 0 at the input side ('{profile[0]['layer']}') while layers nearer the "
                    f"output get gradient; see depth_profile" if math.isinf(fall) else
                    f"gradient norm falls {fall:.1f} decades from the layers nearest the output (median of the last "
                    f"third) to those nearest the input (first third, from '{profile[0]['layer']}'); see depth_profile")
            ratio = profile[0].get("update_to_param")
            if adam and not math.isinf(fall) and ratio is not None and grade(ratio, TINY_UPDATE_RATIO, above=False) is None:
                severity = "INFO"
                text += (f"; {context['optimizer']} rescales each element by its own gradient size, and "
                         + _update_text(profile[0], context) + ": not a vanishing update")
            findings.append(_finding(severity, "vanishing_gradient", profile[0]["layer"], text, fall))
    for row in profile:
        ratio = row.get("update_to_param")
        if ratio is None or not math.isfinite(ratio):
            continue
        severity = grade(ratio, TINY_UPDATE_RATIO, above=False)
        if severity:
            findings.append(_finding(severity, "vanishing_gradient", row["layer"],
                                     _update_text(row, context) + f" (grad/param {row['grad_to_param']:.1e}): "
                                     + ("below fp32's relative resolution, the update rounds away" if severity == "RISK"
                                        else "two decades or more below the band, the layer barely trains"), ratio))
    return findings


def explosion_cause(input_ranges: dict[str, list[float]], module_rows: list[dict[str, Any]],
                    model: nn.Module) -> dict[str, Any] | None:
    """The measured reason gradients are large: unscaled inputs (their range), else the layer whose output grows the
    most over what it receives (max |activation| of a module's output / of the previous module's, forward order)."""
    unscaled = {name: bounds for name, bounds in input_ranges.items()
                if max(abs(bounds[0]), abs(bounds[1])) > UNSCALED_INPUT_MAX_ABS}
    if unscaled:
        name, (low, high) = max(unscaled.items(), key=lambda item: max(abs(item[1][0]), abs(item[1][1])))
        return {"kind": "unscaled_inputs", "input": name, "min": low, "max": high,
                "text": f"input `{name}` is not scaled: its values range {low:.3g} to {high:.3g} (a standardised "
                        f"input stays within about +-4)",
                "fix": f"standardise `{name}` (subtract the training set's mean, divide by its std, per feature) "
                       f"before the model, or put a normalisation layer first"}
    leaves = {name for name, module in model.named_modules() if not list(module.children())}
    previous_peak = max((max(abs(low), abs(high)) for low, high in input_ranges.values()), default=None)
    best = None
    for row in module_rows:
        if row["name"] not in leaves or row["max_abs_activation"] is None or not math.isfinite(row["max_abs_activation"]):
            continue
        peak = row["max_abs_activation"]
        if previous_peak and previous_peak > 0:
            growth = peak / previous_peak
            if best is None or growth > best[1]:
                best = (row["name"], growth, peak)
        previous_peak = peak
    if best is None or best[1] <= 1.0:
        return None
    name, growth, peak = best
    return {"kind": "growing_layer", "module": name, "growth": growth, "max_abs_activation": peak,
            "text": f"`{name}` multiplies the largest magnitude it receives by {growth:.3g} (its output reaches {peak:.3g})",
            "fix": f"look at `{name}`'s initialisation and scale (a normalisation layer after it, or a smaller init gain)"}


def _exploding_findings(profile, global_norms, context, cause) -> list[dict[str, Any]]:
    findings = []
    because = f"; measured cause: {cause['text']}" if cause else ""
    finite = [n for n in global_norms if math.isfinite(n)]
    if finite:
        largest = max(finite)
        severity = grade(largest, EXPLODING_GLOBAL_NORM)
        if severity:
            finding = _finding(severity, "exploding_gradient", "(global)",
                               f"global gradient norm reached {largest:.3g} (>= {EXPLODING_GLOBAL_NORM[severity]:g})"
                               + because, largest)
            finding["fix"] = cause["fix"] if cause else "find the layer whose output grows (grads.py's modules table)"
            findings.append(finding)
    fall = _depth_decades(profile)
    if fall is not None:
        severity = grade(-fall, DEPTH_DECADES)
        if severity:
            findings.append(_finding(severity, "exploding_gradient", profile[0]["layer"],
                                     f"gradient norm grows {-fall:.1f} decades from the layers nearest the output "
                                     f"(median of the last third) to those nearest the input (first third, from "
                                     f"'{profile[0]['layer']}')" + because, -fall))
    for row in profile:
        ratio = row.get("update_to_param")
        if ratio is None or not math.isfinite(ratio):
            continue
        severity = grade(ratio, LARGE_UPDATE_RATIO)
        if severity:
            findings.append(_finding(severity, "exploding_gradient", row["layer"],
                                     _update_text(row, context) + ": one step changes the layer by "
                                     f"{ratio:.0%} of its norm; lower the learning rate", ratio))
    return findings


def _dead_units(probe: ForwardProbe, context: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows, findings = [], []
    samples = context["samples"]
    where = "synthetic inputs" if context["synthetic"] else "--data batches"
    for name, tracker in probe.dead.items():
        if tracker.ever_active is None:
            continue
        active = int(tracker.ever_active.sum())                          # once, after all batches
        units = tracker.ever_active.numel()
        fraction = 1.0 - active / units if units else 0.0
        half = tracker.ever_active_half
        dead_half = (None if half is None or half.shape != tracker.ever_active.shape
                     else units - int(half.sum()))
        stable = dead_half is not None and dead_half == units - active and samples >= DEAD_MIN_SAMPLES
        row = {"layer": name, "type": tracker.type_name, "units": units, "dead_units": units - active, "dead_fraction": fraction,
               "dead_units_after_half": dead_half, "samples_at_half": tracker.samples_half, "samples": samples,
               "stable": stable, "active_when": tracker.rule.active_when, "observations_per_unit": tracker.observations_per_unit,
               "calls": tracker.calls, "calls_not_merged": tracker.shape_changes}
        rows.append(row)
        severity = grade(fraction, DEAD_FRACTION)
        if severity and SEVERITY_RANK[severity] > SEVERITY_RANK[tracker.rule.dead_severity_cap]:
            severity = tracker.rule.dead_severity_cap
        if severity is None and fraction > 0:
            severity = "INFO"
        if not severity:
            continue
        measured = (f"{units - active} of {units} units of '{name}' ({fraction:.0%}) were never active "
                    f"({tracker.rule.active_when}) in any of {samples} samples of {where} "
                    f"({tracker.observations_per_unit} observations per unit)")
        if not stable:
            severity = "INFO"
            reason = (f"only {samples} samples (fewer than {DEAD_MIN_SAMPLES})" if samples < DEAD_MIN_SAMPLES
                      else "one batch cannot show whether the set is stable" if dead_half is None
                      else f"{dead_half} were dead after the first {tracker.samples_half} samples, so the set was still "
                           f"shrinking")
            text = f"{measured}; not judged: {reason}; sample more batches (--batches) or real ones (--data)"
        else:
            text = (f"{measured}, the same {units - active} after the first {tracker.samples_half}: "
                    f"{tracker.rule.reason}")
        findings.append(_finding(severity, "dead_units", name, text, fraction))
    return rows, findings


def _precision_findings(module_rows, precision) -> list[dict[str, Any]]:
    """Per module under autocast: max |activation| against fp16's range, and the fp16 underflow fraction."""
    findings = []
    for row in module_rows:
        peak = row["max_abs_activation"]
        if row["output_finite"] is False:
            findings.append(_finding("RISK", "fp16_overflow", row["name"],
                                     f"the output of '{row['name']}' held inf/NaN under {precision} (fp16 tops out at "
                                     f"{FP16_MAX:g}; see non_finite_activation for the first module)", peak))
        elif peak is not None and peak >= FP16_MAX:
            findings.append(_finding("RISK" if precision in ("fp16", "fp16-autocast") else "CAUTION", "fp16_overflow",
                                     row["name"], f"max |activation| of '{row['name']}' is {peak:.3g}, beyond fp16's "
                                     f"{FP16_MAX:g}: it would be inf in fp16", peak))
        elif peak is not None and peak >= FP16_MAX / 8:
            findings.append(_finding("CAUTION", "fp16_overflow", row["name"],
                                     f"max |activation| of '{row['name']}' is {peak:.3g}, within 8x of fp16's "
                                     f"{FP16_MAX:g}", peak))
        under = row["underflow_fraction"]
        if under is not None and under >= 0.01:
            findings.append(_finding("CAUTION" if under >= 0.1 else "INFO", "fp16_underflow", row["name"],
                                     f"{under:.1%} of the nonzero outputs of '{row['name']}' are below fp16's smallest "
                                     f"normal {FP16_MIN_NORMAL:.2g}", under))
    return findings


# --- capability ------------------------------------------------------------------------------

CONFIG_LR_KEYS = ("lr", "learning_rate")


def choose_lr(args: argparse.Namespace) -> tuple[float, str]:
    """--lr; else lr/learning_rate in the --config section; else torch.optim's default."""
    if getattr(args, "lr", None) is not None:
        return args.lr, getattr(args, "lr_source", None) or "--lr"
    if getattr(args, "config", None):
        section = read_config_section(args.config)
        for key in CONFIG_LR_KEYS:
            if isinstance(section.get(key), (int, float)) and section[key] > 0:
                return float(section[key]), f"--config {args.config}: {key}"
    return TORCH_DEFAULT_LR, f"torch.optim's default lr for {args.optimizer}"


def analyse(args: argparse.Namespace) -> dict[str, Any]:
    groups = parse_groups(args.group)
    session = cli.open_session(args)
    lr, lr_source = choose_lr(args)
    # --optimizer none (a report's memory option: no optimizer state) trains nothing: the plain gradient step is judged
    optimizer = "sgd" if args.optimizer == "none" else args.optimizer
    data = analyse_model(session.model, lambda seed: session.build_inputs(seed=seed), session.loss_fn,
                         batches=args.batches, precision=args.precision, groups=groups, model_name=session.loaded.name,
                         optimizer=optimizer, lr=lr, lr_source=lr_source, synthetic=not getattr(args, "data", None))
    return {"target": args.target, "device": args.device, **data}


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)
    return render.sci(value)


def _summary_rows(data: dict[str, Any]) -> list[list[str]]:
    return [["Stability", data["stability"]],
            ["Batches (train mode)", f"{data['batches']} ({data['samples']} samples, {data['inputs']} inputs)"],
            ["Precision", data["precision"]],
            ["Update judged at", f"{data['optimizer']}, lr {data['lr']:g} ({data['lr_source']})"],
            ["Loss per batch", ", ".join(f"{v:.4g}" for v in data["losses"])],
            ["Global grad norm per batch", ", ".join(_number(v) for v in data["global_grad_norms"])],
            ["Suggested clip norm", (data["clip_withheld_reason"] or "-") if data["suggested_clip_norm"] is None
             else f"{data['suggested_clip_norm']:g}"],
            ["Transformer rule's clip norm", f"{data['transformer_rule_clip_norm']:.1f} (would clip "
                                       f"{data['batches_clipped_at_transformer_rule']} of {data['batches']} batches)"],
            ["Decades lost, output -> input", "-" if data["depth_decades"] is None else f"{data['depth_decades']:.2f}"]]


def _layer_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[str(p["depth"]), p["layer"], p["type"], _number(p["grad_norm_mean"]), _number(p["param_norm"]),
             _number(p["grad_to_param"]), _number(p.get("update_to_param"))] for p in data["depth_profile"]]


def _finding_rows(data: dict[str, Any]) -> list[list[str]]:
    return [[f["severity"], f["kind"], f["where"], f["message"]] for f in data["findings"]]


LAYER_HEADERS = ["depth", "layer", "type", "grad norm (mean)", "param norm", "grad/param", "update/param"]


def render_table(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"Gradients of {data['model']} ({data['target']})", "", render.table(_summary_rows(data), []), "",
             f"Clip rule: {data['clip_rule']}", "",
             "Layers in forward order (depth 0 = nearest the input)",
             render.table(_layer_rows(data), LAYER_HEADERS)]
    if data["groups"]:
        parts += ["", "Parameter groups", render.table(
            [[n, g["prefix"], f"{g['parameters_reached']}/{g['trainable']}", "yes" if g["reached"] else "NO",
              _number(g["grad_norm"])] for n, g in data["groups"].items()],
            ["group", "prefix", "reached/trainable", "reached", "grad norm"])]
    if data["dead_units"]:
        parts += ["", "ReLU-family units never active", render.table(
            [[d["layer"], f"{d['dead_units']}/{d['units']}", f"{d['dead_fraction']:.0%}", d["active_when"]]
             for d in data["dead_units"]], ["layer", "dead/units", "dead", "active when"])]
    parts += ["", f"Findings ({STABILITY_RULE})",
              render.table(_finding_rows(data), ["severity", "kind", "where", "message"]) if data["findings"]
              else "none"]
    return "\n".join(parts)


def chart_axis(profile: list[dict[str, Any]]) -> list[int]:
    """[floor, top] of the chart's y axis: one decade of margin beyond the finite log10 norms."""
    finite = [p["log10_grad_norm"] for p in profile if p["log10_grad_norm"] is not None]
    return [math.floor(min(finite)) - 1 if finite else -1, math.ceil(max(finite)) + 1 if finite else 1]


def mermaid_chart(profile: list[dict[str, Any]]) -> str:
    """A mermaid xychart-beta bar chart of log10(grad norm) per layer; a layer without a finite norm sits at the floor."""
    values = [p["log10_grad_norm"] for p in profile]
    floor, top = chart_axis(profile)
    labels = ", ".join('"' + p["layer"].replace('"', "'") + '"' for p in profile)
    bars = ", ".join(f"{(v if v is not None else floor):.2f}" for v in values)
    return "\n".join(["```mermaid", "xychart-beta", '    title "log10 gradient norm per layer (forward order)"',
                      f"    x-axis [{labels}]", f'    y-axis "log10(grad norm)" {floor} --> {top}',
                      f"    bar [{bars}]", "```"])


def render_markdown(data: dict[str, Any], args: argparse.Namespace) -> str:
    parts = [f"### Gradients: {data['model']} — {data['stability']}", "",
             render.markdown_table(_summary_rows(data), ["quantity", "value"]), "",
             f"Clip rule: {data['clip_rule']}.", "", mermaid_chart(data["depth_profile"]), "",
             render.markdown_table([[r[0], f"`{r[1]}`", *r[2:]] for r in _layer_rows(data)], LAYER_HEADERS)]
    if data["groups"]:
        parts += ["", render.markdown_table(
            [[n, f"`{g['prefix']}`", f"{g['parameters_reached']}/{g['trainable']}", "yes" if g["reached"] else "**no**",
              _number(g["grad_norm"])] for n, g in data["groups"].items()],
            ["group", "prefix", "reached/trainable", "reached", "grad norm"])]
    parts += ["", f"Findings ({STABILITY_RULE}):", ""]
    parts += [f"- **{f['severity']}** `{f['kind']}` at `{f['where']}`: {f['message']}" for f in data["findings"]] or ["- none"]
    return "\n".join(parts)


CAPABILITY = cli.Capability(
    name="grads", version=1,
    description="Gradient health over N sampled training steps: per-parameter/module norms, depth profile, "
                "clip suggestion, NaN/vanishing/exploding/unused/detached/frozen/dead-unit findings, groups, fp16 range.",
    add_arguments=add_arguments, analyse=analyse, render_table=render_table, render_markdown=render_markdown)
