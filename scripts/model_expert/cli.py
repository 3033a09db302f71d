"""The command-line contract shared by every script (DESIGN.md): options, output, errors."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import warnings
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .cli_base import OneLineArgumentParser, configure_threads, json_safe, to_json, write_atomically  # noqa: F401
from . import profile as project_profile
from .errors import UserError  # noqa: F401  (re-exported for capabilities)
from .inputs import (REAL_VALUE_MAX_BYTES, DataInputs, FactoryInputs, InputSource, ModelInputs, SpecInputs, input_bytes,
                     remember_real_values)
from .model_copy import copy_model, lazy_modules, materialise_lazy
from .runner import LossFunction, default_losses_used, loss_description
from .target import DEVICES, LoadedModel, checkpoints_loaded, default_input_source, load_function, load_model, parse_kwargs_json

OPTIMIZERS = ("adamw", "adam", "sgd", "sgd-momentum", "none")
PRECISIONS = ("fp32", "bf16", "fp16", "bf16-autocast", "fp16-autocast")
TARGET_DEVICES = ("cuda", "cpu")


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("target", metavar="TARGET",
                       help="path/to/file.py:NAME or package.module:NAME (a Module class, a factory, or an instance)")
    group.add_argument("--kwargs", metavar="JSON", help="constructor/factory keyword arguments as a JSON object")
    group.add_argument("--config", metavar="FILE.ini:SECTION", help="constructor arguments from an INI section")
    group.add_argument("--checkpoint", metavar="FILE", help="state dict to load (always weights_only=True)")
    group.add_argument("--device", choices=DEVICES, default="cpu",
                       help="where the model is built and run; meta allocates nothing (default: cpu)")


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("inputs")
    group.add_argument("--input", action="append", default=[], metavar="SPEC",
                       help="a forward input, in order; name=SPEC for keywords. SPEC: dtype[dims][<high], "
                            "e.g. float32[B=32,T=200,512], mask=bool[B,T], int64[8,512]<50257")
    group.add_argument("--inputs", metavar="FILE.py:FN",
                       help="FN() returns the inputs: tensor, tuple, dict or (tuple, dict); a batch_size keyword makes the batch resizable")
    group.add_argument("--batch-size", type=int, metavar="N", help="set the batch dim (the dim named B) to N")
    group.add_argument("--dim", action="append", default=[], metavar="NAME=N",
                       help="set a named input dim, e.g. --dim T=1024")
    group.add_argument("--data", metavar="FILE.py:FN",
                       help="FN() returns an iterable of real batches (e.g. a DataLoader over a slice of the data); "
                            "synthetic inputs test the wiring, real batches test the learning rate")
    group.add_argument("--batch-inputs", metavar="FILE.py:FN",
                       help="FN(batch) picks the model inputs out of a --data batch (default: the batch read like "
                            "--inputs' value)")


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training step")
    group.add_argument("--loss", metavar="FILE.py:FN",
                       help="FN(output) or FN(output, batch) returns the scalar to backpropagate (default: output.loss, else the "
                            "mean of floating outputs)")
    group.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw", help="torch.optim class, default settings (default: adamw)")
    group.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="bf16/fp16: parameters and floating inputs cast; *-autocast: fp32 parameters under torch.autocast")
    group.add_argument("--target-device", choices=TARGET_DEVICES, default="cuda",
                       help="whose kernels and allocator the estimate models (default: cuda)")


def add_output_arguments(parser: argparse.ArgumentParser, markdown: bool = True) -> None:
    group = parser.add_argument_group("output")
    group.add_argument("--json", action="store_true", help="print one JSON object with a 'schema' key")
    if markdown:
        group.add_argument("--markdown", action="store_true", help="print Markdown (for PR descriptions)")
    group.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def parse_dim_overrides(args: argparse.Namespace) -> dict[str, int]:
    overrides: dict[str, int] = {}
    for text in getattr(args, "dim", []) or []:
        name, sep, value = text.partition("=")
        if not sep or not name.isidentifier() or not value.strip().lstrip("-").isdigit():
            raise UserError(f"bad --dim '{text}'; write NAME=N, e.g. --dim T=1024")
        if int(value) < 0:
            raise UserError(f"bad --dim '{text}': a size cannot be negative")
        overrides[name] = int(value)
    batch = getattr(args, "batch_size", None)
    if batch is not None:
        if batch <= 0:
            raise UserError(f"--batch-size must be a positive whole number, not {batch}")
        overrides["B"] = batch
    return overrides


@dataclass
class Session:
    """What every model-running capability starts from."""

    loaded: LoadedModel
    input_source: InputSource | None
    dim_overrides: dict[str, int] = field(default_factory=dict)
    loss_fn: LossFunction | None = None

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.module

    def build_inputs(self, device: str | None = None, extra_overrides: dict[str, int] | None = None,
                     seed: int = 0) -> ModelInputs:
        overrides = {**self.dim_overrides, **(extra_overrides or {})}
        target = device or self.loaded.device
        inputs = self.input_source.build(target, overrides, seed=seed)
        if torch.device(target).type == "meta" and any(
                isinstance(t, torch.Tensor) and not t.is_floating_point()
                for t in torch.utils._pytree.tree_flatten((inputs.args, inputs.kwargs))[0]) \
                and input_bytes(inputs) <= REAL_VALUE_MAX_BYTES:
            # the integer/bool inputs keep their real values (lengths, indices, masks the model may read)
            remember_real_values(inputs, self.input_source.build("cpu", overrides, seed=seed))
        return inputs


def _input_source(args: argparse.Namespace, loaded: LoadedModel) -> InputSource:
    given = [flag for flag, key in (("--input", "input"), ("--inputs", "inputs"), ("--data", "data"))
             if getattr(args, key, None)]
    if len(given) > 1:
        raise UserError(f"give one of --input specs, --inputs FILE.py:FN or --data FILE.py:FN, not both "
                        f"{given[0]} and {given[1]}")
    if getattr(args, "batch_inputs", None) and not getattr(args, "data", None):
        raise UserError("--batch-inputs picks the model inputs out of --data batches; give --data FILE.py:FN too")
    if getattr(args, "data", None):
        pick = load_function(args.batch_inputs, "--batch-inputs") if getattr(args, "batch_inputs", None) else None
        return DataInputs(load_function(args.data, "--data"), f"--data {args.data}", pick)
    if getattr(args, "input", None):
        return SpecInputs(args.input)
    if getattr(args, "inputs", None):
        return FactoryInputs(load_function(args.inputs, "--inputs"), f"--inputs {args.inputs}")
    return default_input_source(loaded)


# Models loaded inside shared_sessions(), by the options that build them (None outside: every call builds).
_shared_models: dict[tuple, LoadedModel] | None = None


@contextlib.contextmanager
def shared_sessions():
    """Inside: open_session builds each model (import, constructor, checkpoint) once and hands the same instance
    to every section that asks with the same options; the review runs its sections in one process this way. Each
    section runs the model inside guard.preserved, so the next one finds it as it was."""
    global _shared_models
    previous, _shared_models = _shared_models, {}
    try:
        yield
    finally:
        _shared_models = previous


def _load_model_once(args: argparse.Namespace) -> LoadedModel:
    key = (args.target, args.kwargs, args.config, args.checkpoint, args.device)
    if _shared_models is not None and key in _shared_models:
        return _shared_models[key]
    loaded = load_model(args.target, kwargs=parse_kwargs_json(args.kwargs), config=args.config,
                        checkpoint=args.checkpoint, device=args.device)
    if _shared_models is not None:
        _shared_models[key] = loaded
    return loaded


def open_session(args: argparse.Namespace, inputs_required: bool = True) -> Session:
    """Load the model, the inputs and the loss from the parsed common options. Lazy modules are
    materialised first, on the tools' own copy, by one forward on the inputs (on meta with --device meta).
    INPUTS_REQUIRED=False (params): inputs are looked up only when lazy modules need them."""
    loaded = _load_model_once(args)
    lazy = lazy_modules(loaded.module)
    inputs_given = any(getattr(args, key, None) for key in ("input", "inputs", "data", "batch_inputs"))
    source = _input_source(args, loaded) if inputs_required or lazy or inputs_given else None
    session = Session(loaded=loaded, input_source=source, dim_overrides=parse_dim_overrides(args),
                      loss_fn=load_function(args.loss, "--loss") if getattr(args, "loss", None) else None)
    if lazy:
        if not loaded.owned:
            loaded.module = copy_model(loaded.module)
            loaded.owned = True
        materialise_lazy(loaded.module, session.build_inputs, loaded.name)
    return session


@dataclass
class Capability:
    """One script: its options, the analysis returning plain data, and its renderers."""

    name: str
    version: int
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    analyse: Callable[[argparse.Namespace], dict[str, Any]]
    render_table: Callable[[dict[str, Any], argparse.Namespace], str]
    render_markdown: Callable[[dict[str, Any], argparse.Namespace], str] | None = None
    # "Loss: ..." under the title line; off where stdout is only a list of files (report: "wrote ..."),
    # whose review states the loss itself
    loss_line: bool = True

    @property
    def schema(self) -> str:
        return f"model-expert/{self.name}/{self.version}"

    def parser(self, prog: str | None = None) -> argparse.ArgumentParser:
        parser = OneLineArgumentParser(prog=prog or f"{self.name}.py", description=self.description)
        self.add_arguments(parser)
        return parser


def namespace_for(capability: "Capability", source: argparse.Namespace, overrides: dict[str, Any] | None = None,
                  skip: frozenset[str] = frozenset()) -> argparse.Namespace:
    """Options for running CAPABILITY in-process: its parser's defaults, then SOURCE's options of the same
    name (unset ones and SKIP left out), then OVERRIDES. What the capability lacks is dropped, never an error."""
    namespace = capability.parser().parse_args([source.target])
    for key, value in vars(source).items():
        if key in skip or key == "target" or not hasattr(namespace, key) or value is None or value == []:
            continue
        setattr(namespace, key, value)
    for key, value in (overrides or {}).items():
        if hasattr(namespace, key):
            setattr(namespace, key, value)
    return namespace


@contextlib.contextmanager
def quiet_libraries(enabled: bool):
    """Library warnings and Hugging Face log lines would break the one-line error contract and clutter
    the output; they are shown with --debug."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # for a transformers imported from here on
    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logger.setLevel(level)


def _with_loss_line(text: str, loss: str | None, checkpoint: dict[str, Any] | None = None) -> str:
    """The loss that was backpropagated and the checkpoint that was loaded, under the title line of every script."""
    lines = ([f"Loss: {loss}"] if loss else []) + ([f"Checkpoint: {checkpoint['summary']}"] if checkpoint else [])
    if not lines:
        return text
    title, _, rest = text.partition("\n")
    return "\n".join([title, *lines, rest])


def main(capability: Capability, argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = capability.parser(prog)
    args = parser.parse_args(argv)
    # The command as the user typed it, for "Reproduce with": `model-expert NAME` once installed.
    args.command_line = " ".join([prog or f"python scripts/{capability.name}.py",
                                  *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    debug = getattr(args, "debug", False)
    threads = configure_threads(torch)
    if debug:
        count = threads["threads"]
        sys.stderr.write(f"{parser.prog}: torch runs {count} intra-op thread{'s' if count != 1 else ''} "
                         f"({threads['source']})\n")
    try:
        if capability.name in project_profile.READERS:
            args.profile_info = project_profile.apply(args, parser)
        default_losses_used.clear()
        checkpoints_loaded.clear()
        with quiet_libraries(not debug):
            data = {"schema": capability.schema, **capability.analyse(args)}
        loss = loss_description(getattr(args, "loss", None)) if hasattr(args, "loss") and capability.loss_line else None
        if loss:
            data.setdefault("loss", loss)
        if checkpoints_loaded:
            data.setdefault("checkpoint", checkpoints_loaded[0])
        if getattr(args, "profile_info", None):
            data.setdefault("profile", args.profile_info)
        checkpoint = data.get("checkpoint") if isinstance(data.get("checkpoint"), dict) else None
        if getattr(args, "json", False):
            text = to_json(data)
        elif getattr(args, "markdown", False) and capability.render_markdown is not None:
            text = _with_loss_line(capability.render_markdown(data, args), data.get("loss"), checkpoint)
        else:
            text = _with_loss_line(capability.render_table(data, args), data.get("loss"), checkpoint)
    except UserError as error:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{parser.prog}: error: {error}\n")
        return error.exit_code
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{parser.prog}: interrupted; the model was restored and nothing was written\n")
        return 130
    except MemoryError:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{parser.prog}: error: out of memory; use smaller inputs or --device meta\n")
        return 2
    except Exception as error:  # a failure nobody turned into a UserError: still one line, exit 2
        if debug:
            traceback.print_exc()
        first = (str(error).strip().splitlines() or ["(no message)"])[0]
        sys.stderr.write(f"{parser.prog}: error: {type(error).__name__}: {first} (rerun with --debug for the traceback)\n")
        return 2
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()
    return 0
