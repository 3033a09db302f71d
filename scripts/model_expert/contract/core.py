"""What every contract check shares: the inputs' named dims, one forward, and output comparison.

Dims are named as the inputs name them: a spec's named dims (`T` in float32[B=8,T=64,512]) or an
inputs factory's integer keywords (`max_images`). Which tensor axes a name covers is measured, not
guessed: the inputs are rebuilt with that one dim one larger, and the axes whose size changed are its.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..inputs import DTYPE_NAMES, InputSource, ModelInputs, SpecInputs, positional_names
from ..runner import ModelCallError, call_model

# fp32 comparisons allow 1e-5 x max|output|; other dtypes scale it by their machine epsilon.
RELATIVE_TOLERANCE_FP32 = 1e-5
TOLERANCE_RULE = ("outputs agree when |a - b| <= 1e-5 x max|output| x eps(dtype)/eps(float32) "
                  "(1e-5 x max|output| in float32), per output tensor")


def relative_tolerance(dtype: torch.dtype) -> float:
    """1e-5 scaled by the dtype's machine epsilon relative to float32's."""
    if not dtype.is_floating_point:
        return 0.0
    return RELATIVE_TOLERANCE_FP32 * torch.finfo(dtype).eps / torch.finfo(torch.float32).eps


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


@dataclass(frozen=True)
class Location:
    """Where a top-level input tensor sits in the call: args[index] or kwargs[key]."""

    name: str
    index: int | None = None
    key: str | None = None


def input_tensors(inputs: ModelInputs, forward: Any) -> dict[str, tuple[Location, torch.Tensor]]:
    """Top-level tensor inputs by name (the forward's parameter name, as trace names them)."""
    names = positional_names(forward)
    found: dict[str, tuple[Location, torch.Tensor]] = {}
    for index, value in enumerate(inputs.args):
        if isinstance(value, torch.Tensor):
            name = names[index] if index < len(names) else f"args[{index}]"
            found[name] = (Location(name, index=index), value)
    for key, value in inputs.kwargs.items():
        if isinstance(value, torch.Tensor):
            found[key] = (Location(key, key=key), value)
    return found


def replaced(inputs: ModelInputs, locations: dict[str, Location], new: dict[str, torch.Tensor]) -> ModelInputs:
    """A copy of INPUTS with the named top-level tensors replaced."""
    args, kwargs = list(inputs.args), dict(inputs.kwargs)
    for name, tensor in new.items():
        location = locations[name]
        if location.index is not None:
            args[location.index] = tensor
        else:
            kwargs[location.key] = tensor
    return ModelInputs(args=tuple(args), kwargs=kwargs)


def named_outputs(value: Any, where: str = "out") -> list[tuple[str, torch.Tensor]]:
    """Floating tensors of an output, named as trace names them (out, out[0], out.logits)."""
    if isinstance(value, torch.Tensor):
        return [(where, value)] if value.is_floating_point() else []
    if isinstance(value, (list, tuple)):
        return [pair for i, item in enumerate(value) for pair in named_outputs(item, f"{where}[{i}]")]
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in named_outputs(item, f"{where}.{key}")]
    return []


def max_abs_difference(a: torch.Tensor, b: torch.Tensor, nan_equal: bool = True) -> float:
    """max |a - b|; NaN against a number counts as inf. NaN against NaN and equal infinities count as equal
    when NAN_EQUAL (the same computation twice), as changed (inf) otherwise: a verdict that the data cannot
    move an output must not rest on outputs that are NaN either way."""
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    a, b = a.double(), b.double()
    if nan_equal:
        agree = (torch.isnan(a) & torch.isnan(b)) | (torch.isinf(a) & (a == b))
    else:
        agree = torch.zeros_like(a, dtype=torch.bool)
    difference = torch.where(agree, torch.zeros_like(a), (a - b).abs())
    difference = torch.where(torch.isnan(difference), torch.full_like(difference, float("inf")), difference)
    return float(difference.max())


def finite_abs_max(tensor: torch.Tensor) -> float:
    finite = tensor[torch.isfinite(tensor)]
    return float(finite.abs().max()) if finite.numel() else 0.0


@dataclass
class Comparison:
    max_abs_change: float
    within_tolerance: bool
    # per output: name -> (max |change|, within its tolerance)
    per_output: dict[str, tuple[float, bool]] = field(default_factory=dict)

    @property
    def moved(self) -> list[str]:
        """The outputs that moved beyond their tolerance, the largest change first."""
        names = [name for name, (_, within) in self.per_output.items() if not within]
        return sorted(names, key=lambda name: -self.per_output[name][0])


def compare(reference: list[tuple[str, torch.Tensor]], other: list[tuple[str, torch.Tensor]],
            nan_equal: bool = True) -> Comparison:
    """Every output tensor within its tolerance (relative to the reference's scale)?"""
    if [n for n, _ in reference] != [n for n, _ in other]:
        return Comparison(float("inf"), False)
    worst, within, per_output = 0.0, True, {}
    for (name, a), (_, b) in zip(reference, other):
        change = max_abs_difference(a, b, nan_equal)
        worst = max(worst, change)
        tolerance = relative_tolerance(a.dtype) * finite_abs_max(a)
        per_output[name] = (change, change <= tolerance)
        within = within and change <= tolerance
    return Comparison(worst, within, per_output)


@dataclass
class Dim:
    """A named input dim: its size in this run and the input axes it covers ({input name: [axis, ...]})."""

    name: str
    size: int
    axes: dict[str, list[int]] = field(default_factory=dict)


class Harness:
    """The model in eval mode, its inputs, their named dims; runs forwards without grad."""

    def __init__(self, model: nn.Module, source: InputSource, overrides: dict[str, int], device: str,
                 model_name: str):
        self.model, self.source, self.device, self.model_name = model, source, device, model_name
        self.overrides = dict(overrides)
        self.from_spec = isinstance(source, SpecInputs)
        self.batch_dim = source.batch_dim_name
        sizes = {**source.resizable_dims, **self.overrides}
        if self.batch_dim and sizes.get(self.batch_dim, 2) < 2:
            self.overrides[self.batch_dim] = 2  # independence and padding need two samples
            sizes[self.batch_dim] = 2
        self.inputs = self.build()
        located = input_tensors(self.inputs, model.forward)
        self.locations = {name: loc for name, (loc, _) in located.items()}
        self.tensors = {name: tensor for name, (_, tensor) in located.items()}
        self.dims = self._measure_dims(sizes)
        self._output_axes: dict[str, dict[str, list[int]] | None] = {}
        self._deterministic: bool | None = None

    @property
    def deterministic(self) -> bool:
        """Two eval forwards on the same inputs agree (no random numbers drawn in forward)."""
        if self._deterministic is None:
            self._deterministic = compare(self.run(self.inputs), self.run(self.inputs)).within_tolerance
        return self._deterministic

    def build(self, extra: dict[str, int] | None = None, seed: int = 0) -> ModelInputs:
        return self.source.build(self.device, {**self.overrides, **(extra or {})}, seed=seed)

    def _measure_dims(self, sizes: dict[str, int]) -> dict[str, Dim]:
        dims: dict[str, Dim] = {}
        for name, size in sizes.items():
            grown = input_tensors(self.build({name: size + 1}), self.model.forward)
            axes = {}
            for tensor_name, tensor in self.tensors.items():
                if tensor_name in grown:
                    other = grown[tensor_name][1]
                    changed = [axis for axis in range(min(tensor.dim(), other.dim()))
                               if tensor.shape[axis] != other.shape[axis]]
                    if changed:
                        axes[tensor_name] = changed
            if axes:
                dims[name] = Dim(name=name, size=size, axes=axes)
        return dims

    def axis_names(self, tensor_name: str) -> list[str | None]:
        """The dim name of every axis of an input (None where no named dim covers it)."""
        names: list[str | None] = [None] * self.tensors[tensor_name].dim()
        for dim in self.dims.values():
            for axis in dim.axes.get(tensor_name, []):
                names[axis] = dim.name
        return names

    def run(self, inputs: ModelInputs, train: bool = False, seed: int | None = None) -> list[tuple[str, torch.Tensor]]:
        """One forward (eval unless TRAIN; RNG seeded when SEED is given) on fresh copies of the inputs (a forward
        that writes into its inputs cannot change the next run's); the floating outputs, named."""
        self.model.train(train)
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            output = call_unhooked(self.model, fresh_copies(inputs), self.model_name)
        outputs = named_outputs(output)
        if not outputs:
            raise UserError(f"the output of {self.model_name} has no floating-point tensor to compare; contract "
                            f"checks floating outputs (return the scores or logits)")
        return outputs

    def try_run(self, inputs: ModelInputs, **options: Any) -> tuple[list[tuple[str, torch.Tensor]] | None, str | None]:
        """run(), with a failing forward returned as its one-line error."""
        try:
            return self.run(inputs, **options), None
        except ModelCallError as error:
            return None, str(error)
        except UserError as error:
            return None, str(error)

    def output_axes(self, dim: str) -> dict[str, list[int]] | None:
        """Output axes that grow with DIM ({output name: [axis, ...]}), from a forward at size + 1; None if it fails."""
        if dim not in self._output_axes:
            base, _ = self.try_run(self.inputs)
            grown, _ = self.try_run(self.build({dim: self.dims[dim].size + 1}))
            if base is None or grown is None:
                self._output_axes[dim] = None
            else:
                grown_by_name = dict(grown)
                self._output_axes[dim] = {
                    name: [a for a in range(tensor.dim()) if name in grown_by_name
                           and a < grown_by_name[name].dim() and grown_by_name[name].shape[a] != tensor.shape[a]]
                    for name, tensor in base}
        return self._output_axes[dim]


def fresh_copies(inputs: ModelInputs) -> ModelInputs:
    """The inputs with every tensor (at any depth) cloned."""
    def copied(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.clone()
        if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
            return type(value)(copied(v) for v in value)
        if isinstance(value, dict):
            return {k: copied(v) for k, v in value.items()}
        return value
    return ModelInputs(args=tuple(copied(a) for a in inputs.args),
                       kwargs={k: copied(v) for k, v in inputs.kwargs.items()}, batch=inputs.batch)


def call_unhooked(model: nn.Module, inputs: ModelInputs, model_name: str) -> Any:
    """model(*args, **kwargs) as the user runs it. Forward hooks switch off torch's fused fast paths
    (eval-mode nn.TransformerEncoderLayer gives 0 instead of NaN for an all-padding row under hooks), so
    the hooked call_model runs only to name the failing module once a forward has failed."""
    try:
        return model(*inputs.args, **inputs.kwargs)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception:
        return call_model(model, inputs, model_name)


def fresh_like(tensor: torch.Tensor, generator: torch.Generator, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """New values of the same kind (in SHAPE, default the tensor's): floating ~ N(mean, (3 std)^2), integers
    within the tensor's own range."""
    shape = tuple(tensor.shape) if shape is None else tuple(shape)
    if tensor.is_floating_point():
        scale = float(tensor.float().std()) if tensor.numel() > 1 else 1.0
        scale = scale if scale > 0 and scale == scale else 1.0
        mean = float(tensor.float().mean()) if tensor.numel() else 0.0
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return (noise * 3 * scale + mean).to(tensor.dtype).to(tensor.device)
    if tensor.dtype == torch.bool:
        return (torch.randint(0, 2, shape, generator=generator) > 0).to(tensor.device)
    low, high = (int(tensor.min()), int(tensor.max())) if tensor.numel() else (0, 1)
    return torch.randint(low, high + 1, shape, generator=generator, dtype=tensor.dtype).to(tensor.device)


def can_vary(tensor: torch.Tensor) -> bool:
    """Whether fresh_like can give different values (an integer tensor holding one value cannot)."""
    if tensor.is_floating_point():
        return True
    return tensor.numel() > 0 and int(tensor.min()) != int(tensor.max())


def finding(severity: str, check: str, text: str, fix: str | None = None, **where: Any) -> dict[str, Any]:
    """A finding as DESIGN.md's contract gives it: severity, check, what it concerns (always its `output`, None where
    no output is concerned), text (and the fix)."""
    entry: dict[str, Any] = {"severity": severity, "check": check, **{k: v for k, v in where.items() if v is not None},
                             "output": where.get("output"), "text": text}
    if fix:
        entry["fix"] = fix
    return entry
