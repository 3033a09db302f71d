"""Model inputs: the `--input` grammar, `--inputs FILE.py:FN` factories, and `example_inputs()`.

Grammar of one `--input` (DESIGN.md):   [name=]dtype[dim,dim,...][<high]
  dim    N  |  NAME=N  (defines NAME)  |  NAME  (reuses a NAME defined earlier)
  <high  integers (and bools) are drawn uniformly in [0, high); without it, int tensors are
         drawn below 2 and bool tensors are all False (a padding mask that masks nothing).
Floating tensors are standard normal. All draws come from a private generator seeded with
`seed`, so building inputs never touches the global RNG.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils._pytree import tree_map

from .errors import UserError

# name -> dtype; the first name of each dtype is the canonical one printed back.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "half": torch.float16, "fp16": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float64": torch.float64, "double": torch.float64, "fp64": torch.float64,
    "int64": torch.int64, "long": torch.int64,
    "int32": torch.int32, "int": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {dtype: name for name, dtype in reversed(list(DTYPES.items()))}
BATCH_DIM_NAME = "B"

_SPEC_RE = re.compile(
    r"^(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)=)?(?P<dtype>[A-Za-z0-9_]+)"
    r"\[(?P<dims>[^\[\]]*)\](?:<(?P<high>[^<>]+))?$")
_DIM_RE = re.compile(r"^(?:(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:=(?P<value>-?\d+))?|(?P<size>-?\d+))$")
_INT_ANY = re.compile(r"^-?\d+$")
MAX_DIM_SIZE = 2**40


@dataclass(frozen=True)
class Dim:
    size: int
    name: str | None = None  # a named dim can be resized with overrides (the batch, --vary)


@dataclass(frozen=True)
class InputSpec:
    text: str
    keyword: str | None
    dtype: torch.dtype
    dims: tuple[Dim, ...]
    high: int | None


def _fail(spec: str, why: str) -> UserError:
    return UserError(f"bad --input '{spec}': {why}; expected e.g. float32[B=32,T=128,512], "
                     f"bool[B,T] or ids=int64[8,512]<50257")


def parse_input_spec(text: str, known_dims: dict[str, int] | None = None) -> InputSpec:
    """Parse one `--input`. `known_dims` holds named dims defined by earlier specs (updated)."""
    known = known_dims if known_dims is not None else {}
    stripped = text.strip()
    if not stripped:
        raise _fail(text, "it is empty")
    if stripped.count("[") != 1 or stripped.count("]") != 1 or stripped.index("[") > stripped.index("]"):
        raise _fail(text, "the dims must be in one pair of square brackets")
    match = _SPEC_RE.match(stripped)
    if not match:
        raise _fail(text, "it does not follow [name=]dtype[dims][<high]")
    dtype_name = match["dtype"]
    if dtype_name not in DTYPES:
        raise UserError(f"unknown dtype '{dtype_name}' in --input '{text}'; expected one of "
                        f"{', '.join(sorted(set(DTYPE_NAMES.values())))}")
    dtype = DTYPES[dtype_name]
    dims: list[Dim] = []
    dims_text = match["dims"].strip()
    for part in ([p.strip() for p in dims_text.split(",")] if dims_text else []):
        dim_match = _DIM_RE.match(part)
        if not dim_match:
            raise _fail(text, f"dim '{part}' is not a whole number, NAME=N or a NAME defined earlier")
        name, value = dim_match["name"], dim_match["value"] or dim_match["size"]
        if name is not None and value is None:
            if name not in known:
                raise _fail(text, f"dim '{name}' has no size; define it once as {name}=N")
            size = known[name]
        else:
            size = int(value)
            if size < 0:
                raise _fail(text, f"dim {part} is negative")
            if size > MAX_DIM_SIZE:
                raise _fail(text, f"dim {part} is larger than {MAX_DIM_SIZE}")
            if name is not None:
                if name in known and known[name] != size:
                    raise _fail(text, f"dim {name} is {size} here but {known[name]} earlier")
                known[name] = size
        dims.append(Dim(size=size, name=name))
    high = None
    if match["high"] is not None:
        if not _INT_ANY.match(match["high"].strip()) or int(match["high"]) <= 0:
            raise _fail(text, f"'<{match['high']}' must be a positive whole number")
        if dtype.is_floating_point:
            raise _fail(text, "'<high' applies to integer and bool inputs only")
        high = int(match["high"])
    return InputSpec(text=text, keyword=match["name"], dtype=dtype, dims=tuple(dims), high=high)


@dataclass
class ModelInputs:
    """What the model is called with: model(*args, **kwargs)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    batch: Any = None  # the --data batch these inputs came from (a two-parameter --loss reads its labels)

    def describe(self, forward: Callable[..., Any] | None = None) -> list[dict[str, Any]]:
        """One row per tensor input: where it goes (the forward's parameter name when known), shape, dtype, device."""
        names = positional_names(forward) if forward is not None else []
        rows = []
        for position, value in enumerate(self.args):
            label = names[position] if position < len(names) else f"args[{position}]"
            rows.extend(describe_value(label, value))
        for key, value in self.kwargs.items():
            rows.extend(describe_value(key, value))
        return rows


def positional_names(function: Callable[..., Any]) -> list[str]:
    """Names of a callable's positional parameters (self excluded); [] if it has no signature."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def describe_value(where: str, value: Any) -> list[dict[str, Any]]:
    """Flatten tensors inside tuples/lists/dicts into {name, shape, dtype, device} rows."""
    if isinstance(value, torch.Tensor):
        return [{"name": where, "shape": list(value.shape), "dtype": DTYPE_NAMES.get(value.dtype, str(value.dtype)),
                 "device": value.device.type}]
    if isinstance(value, (list, tuple)):
        return [row for i, item in enumerate(value) for row in describe_value(f"{where}[{i}]", item)]
    if isinstance(value, dict):
        return [row for k, item in value.items() for row in describe_value(f"{where}.{k}", item)]
    return []


class InputSource:
    """Builds ModelInputs on a device, optionally with named dims resized."""

    batch_dim_name: str | None = None

    def build(self, device: str | torch.device, dim_overrides: dict[str, int] | None = None,
              seed: int = 0) -> ModelInputs:
        raise NotImplementedError

    @property
    def resizable_dims(self) -> dict[str, int]:
        """Named dims and their default sizes."""
        return {}


class SpecInputs(InputSource):
    def __init__(self, texts: list[str]):
        known: dict[str, int] = {}
        self.specs = [parse_input_spec(text, known) for text in texts]
        self.default_dims = dict(known)
        self.batch_dim_name = BATCH_DIM_NAME if BATCH_DIM_NAME in known else None
        seen: set[str] = set()
        for spec in self.specs:
            if spec.keyword is not None:
                if spec.keyword in seen:
                    raise UserError(f"--input keyword '{spec.keyword}' is given twice; give each keyword input once")
                seen.add(spec.keyword)
            elif seen:
                raise UserError(f"positional --input '{spec.text}' comes after a keyword input; "
                                f"put positional inputs first")

    @property
    def resizable_dims(self) -> dict[str, int]:
        return dict(self.default_dims)

    def build(self, device, dim_overrides=None, seed=0) -> ModelInputs:
        overrides = dim_overrides or {}
        unknown = sorted(set(overrides) - set(self.default_dims))
        if unknown:
            raise UserError(f"no input dim is named {', '.join(unknown)}; named dims are "
                            f"{', '.join(self.default_dims) or 'none'} (name one as B=32 in --input)")
        generator = torch.Generator().manual_seed(seed)
        inputs = ModelInputs()
        for spec in self.specs:
            shape = [overrides.get(d.name, d.size) if d.name else d.size for d in spec.dims]
            tensor = _make_tensor(spec, shape, torch.device(device), generator)
            if spec.keyword is None:
                inputs.args += (tensor,)
            else:
                inputs.kwargs[spec.keyword] = tensor
        return inputs


def _make_tensor(spec: InputSpec, shape: list[int], device: torch.device,
                 generator: torch.Generator) -> torch.Tensor:
    if device.type == "meta":
        return torch.empty(shape, dtype=spec.dtype, device="meta")
    try:
        if spec.dtype.is_floating_point:
            value = torch.randn(shape, generator=generator, dtype=torch.float32).to(spec.dtype)
        elif spec.dtype == torch.bool:
            value = (torch.randint(0, spec.high, shape, generator=generator) > 0 if spec.high
                     else torch.zeros(shape, dtype=torch.bool))
        else:
            value = torch.randint(0, spec.high or 2, shape, generator=generator, dtype=spec.dtype)
    except (RuntimeError, MemoryError) as error:
        raise UserError(f"cannot allocate --input '{spec.text}' ({_numel(shape):,} elements): "
                        f"{str(error).splitlines()[0]}; use smaller dims or --device meta") from None
    return value.to(device)


def _numel(shape: list[int]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def as_model_inputs(value: Any, origin: str) -> ModelInputs:
    """Interpret what a factory returned: tensor, tuple (positional), dict (keyword), (tuple, dict)."""
    if isinstance(value, ModelInputs):
        return value
    if isinstance(value, torch.Tensor):
        return ModelInputs(args=(value,))
    if isinstance(value, dict):
        return ModelInputs(kwargs=dict(value))
    if (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], (tuple, list))
            and isinstance(value[1], dict)):
        return ModelInputs(args=tuple(value[0]), kwargs=dict(value[1]))
    if isinstance(value, (tuple, list)):
        return ModelInputs(args=tuple(value))
    raise UserError(f"{origin} returned {type(value).__name__}; it must return a tensor, a tuple "
                    f"(positional inputs), a dict (keyword inputs) or a pair (tuple, dict)")


class FactoryInputs(InputSource):
    """Inputs from a function. Its integer keyword parameters are resizable dims: `batch_size` is the
    batch (B); any other (e.g. `max_images`) is resized by its own name (--dim, --vary)."""

    def __init__(self, function: Callable[..., Any], origin: str):
        self.function = function
        self.origin = origin
        try:
            parameters = inspect.signature(function).parameters
        except (TypeError, ValueError):
            parameters = {}
        self.int_parameters = {name: p.default for name, p in parameters.items()
                               if isinstance(p.default, int) and not isinstance(p.default, bool)}
        self.accepts_batch_size = "batch_size" in parameters
        self.batch_dim_name = BATCH_DIM_NAME if self.accepts_batch_size else None

    @property
    def resizable_dims(self) -> dict[str, int]:
        dims = {name: default for name, default in self.int_parameters.items() if name != "batch_size"}
        if "batch_size" in self.int_parameters:
            dims = {BATCH_DIM_NAME: self.int_parameters["batch_size"], **dims}
        return dims

    def build(self, device, dim_overrides=None, seed=0) -> ModelInputs:
        overrides = dict(dim_overrides or {})
        call_kwargs = {}
        if BATCH_DIM_NAME in overrides:
            if not self.accepts_batch_size:
                raise UserError(f"{self.origin} does not accept batch_size=, so the batch cannot "
                                f"be changed; add a batch_size keyword to it")
            call_kwargs["batch_size"] = overrides.pop(BATCH_DIM_NAME)
        unknown = sorted(name for name in overrides if name not in self.int_parameters or name == "batch_size")
        if unknown:
            resizable = ", ".join(self.resizable_dims) or "none"
            raise UserError(f"{self.origin} has no integer keyword {', '.join(unknown)} to resize; "
                            f"it can resize {resizable} (B is its batch_size)")
        call_kwargs.update(overrides)
        rng = torch.get_rng_state()
        try:
            torch.manual_seed(seed)
            with torch.device(device):
                value = self.function(**call_kwargs)
        except UserError:
            raise
        except Exception as error:  # the user's factory: any failure is theirs to fix
            raise UserError(f"{self.origin} raised {type(error).__name__}: {_first_line(error)}") from error
        finally:
            torch.set_rng_state(rng)
        return as_model_inputs(value, self.origin)


class FixedInputs(InputSource):
    """Inputs stored on the model (Lightning's `example_input_array`): one fixed batch, not resizable."""

    def __init__(self, value: Any, origin: str):
        self.value = as_model_inputs(value, origin)
        self.origin = origin

    def build(self, device, dim_overrides=None, seed=0) -> ModelInputs:
        if dim_overrides:
            raise UserError(f"{self.origin} is one fixed batch, so {', '.join(sorted(dim_overrides))} cannot be "
                            f"resized; define example_inputs(batch_size=...) or pass --input specs")
        target = torch.device(device)

        def moved(value):
            if not isinstance(value, torch.Tensor):
                return value
            if target.type == "meta":
                return torch.empty_like(value, device="meta")
            if value.device.type == "meta":
                raise UserError(f"{self.origin} holds meta tensors (the model was built on meta); "
                                f"pass --input specs or define example_inputs()")
            return value.detach().clone().to(target)
        return ModelInputs(args=tuple(tree_map(moved, a) for a in self.value.args),
                           kwargs={k: tree_map(moved, v) for k, v in self.value.kwargs.items()})


MAX_DATA_BATCHES = 64  # batches read from --data (a sampled step takes batch seed % count)


def move_to(value: Any, device: str | torch.device) -> Any:
    """Tensors at any depth of lists/tuples/dicts moved to DEVICE (on meta: empty tensors of the same shape)."""
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value, device="meta") if torch.device(device).type == "meta" else value.to(device)
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(move_to(v, device) for v in value)
    if isinstance(value, dict) or hasattr(value, "items") and hasattr(value, "keys"):
        moved = {k: move_to(v, device) for k, v in value.items()}
        return moved if isinstance(value, dict) else type(value)(moved)
    return value


class DataInputs(InputSource):
    """Real batches: `--data FILE.py:FN` returns an iterable of batches (a DataLoader over a slice of the data).
    A batch is read like an inputs factory's value, or `--batch-inputs FILE.py:FN(batch)` picks the model inputs
    out of it; the whole batch stays beside them (`ModelInputs.batch`) for a two-parameter --loss."""

    def __init__(self, function: Callable[..., Any], origin: str,
                 pick: Callable[[Any], Any] | None = None, pick_origin: str = "--batch-inputs"):
        self.function, self.origin, self.pick, self.pick_origin = function, origin, pick, pick_origin
        self._batches: list[Any] | None = None

    def batches(self) -> list[Any]:
        if self._batches is None:
            rng = torch.get_rng_state()
            try:
                torch.manual_seed(0)
                batches = []
                for batch in self.function():
                    batches.append(batch)
                    if len(batches) >= MAX_DATA_BATCHES:
                        break
            except UserError:
                raise
            except Exception as error:  # the user's data code
                raise UserError(f"{self.origin} raised {type(error).__name__}: {_first_line(error)}") from error
            finally:
                torch.set_rng_state(rng)
            if not batches:
                raise UserError(f"{self.origin} yielded no batch; it must return an iterable of batches "
                                f"(e.g. a DataLoader over a slice of the data)")
            self._batches = batches
        return self._batches

    def build(self, device, dim_overrides=None, seed=0) -> ModelInputs:
        if dim_overrides:
            raise UserError(f"{self.origin} gives fixed batches, so {', '.join(dim_overrides)} cannot be resized; "
                            f"drop --batch-size/--dim or change the DataLoader")
        batches = self.batches()
        batch = move_to(batches[seed % len(batches)], device)
        if self.pick is not None:
            try:
                value = self.pick(batch)
            except UserError:
                raise
            except Exception as error:
                raise UserError(f"{self.pick_origin} raised {type(error).__name__}: {_first_line(error)}") from error
            inputs = as_model_inputs(value, self.pick_origin)
        else:
            inputs = as_model_inputs(batch, f"a batch of {self.origin} (use --batch-inputs FILE.py:FN to pick the "
                                            f"model inputs out of it)")
        return ModelInputs(args=inputs.args, kwargs=inputs.kwargs, batch=batch)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


# --- real values behind meta inputs ---------------------------------------------------------------
# A model may read its inputs' values (lengths for pack_padded_sequence, index tensors, masks): on meta those
# values do not exist. When inputs are built on meta the same inputs are also built on CPU (same seed) and the
# integer and bool tensors keep their real values here, so an op that needs them (a copy to CPU, .item(), an op
# without a meta kernel) reads the real ones instead of stand-ins. Floating inputs are not read as values.
REAL_VALUE_MAX_BYTES = 256 << 20   # inputs larger than this in all are not built twice (stand-ins, stated)
_real_values: dict[int, tuple[Any, torch.Tensor]] = {}   # id(meta tensor) -> (weakref to it, its CPU value)


def _leaves(value: Any) -> list[Any]:
    return torch.utils._pytree.tree_flatten(value)[0]


def input_bytes(inputs: ModelInputs) -> int:
    """Bytes of every tensor of INPUTS."""
    return sum(t.numel() * t.element_size() for t in _leaves((inputs.args, inputs.kwargs)) if isinstance(t, torch.Tensor))


def remember_real_values(meta: ModelInputs, real: ModelInputs) -> int:
    """Pair META's integer/bool tensors with REAL's (same structure); returns how many were paired."""
    import weakref
    paired = 0
    for fake, value in zip(_leaves((meta.args, meta.kwargs)), _leaves((real.args, real.kwargs))):
        if (isinstance(fake, torch.Tensor) and isinstance(value, torch.Tensor) and fake.device.type == "meta"
                and not fake.is_floating_point() and not fake.is_complex() and fake.shape == value.shape
                and fake.dtype == value.dtype):
            key = id(fake)
            _real_values[key] = (weakref.ref(fake, lambda _ref, key=key: _real_values.pop(key, None)), value.detach().cpu())
            paired += 1
    return paired


def real_value(tensor: torch.Tensor) -> torch.Tensor | None:
    """The real CPU value behind a meta input tensor, if its inputs were built with one."""
    entry = _real_values.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]
