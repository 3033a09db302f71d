"""Loading the user's model: TARGET, --kwargs, --config FILE.ini:SECTION, --checkpoint, --device."""

from __future__ import annotations

import ast
import configparser
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import random
import sys
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from .errors import UserError
from .inputs import FactoryInputs, FixedInputs, InputSource
from .model_copy import copy_model

DEVICES = ("meta", "cpu", "cuda")
_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")
# Key prefixes torch's wrappers add: DistributedDataParallel / DataParallel keep the model as `.module`,
# torch.compile's OptimizedModule as `._orig_mod`; a state dict saved from the wrapper carries them.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# What the checkpoints loaded by this process did (path, wrapper key unwrapped, prefix stripped); the scripts say
# it under their title and in their JSON (`checkpoint`), as they do for the loss.
checkpoints_loaded: list[dict[str, Any]] = []


def strip_wrapper_prefixes(keys: list[str], expected: set[str]) -> str | None:
    """The run of WRAPPER_PREFIXES (e.g. "module._orig_mod.") every key starts with, when removing it makes the keys
    the model's own; None otherwise."""
    prefix = ""
    while True:
        step = next((p for p in WRAPPER_PREFIXES if keys and all(k.startswith(prefix + p) for k in keys)), None)
        if step is None:
            break
        prefix += step
        if {k[len(prefix):] for k in keys} == expected:
            return prefix
    return None


def checkpoint_summary(info: dict[str, Any]) -> str:
    """One line: what --checkpoint loading did."""
    parts = [f"{info['path']}: {info['tensors']} tensors " + ("loaded" if info["loaded"] else
                                                            "checked against the model (meta holds no values)")]
    if info["wrapper_key"]:
        parts.append(f"unwrapped from the checkpoint's '{info['wrapper_key']}' entry")
    if info["prefix_stripped"]:
        parts.append(f"the key prefix '{info['prefix_stripped']}' stripped (saved from a DistributedDataParallel/"
                     f"DataParallel or torch.compile wrapper)")
    return "; ".join(parts)


@dataclass
class LoadedModel:
    module: nn.Module
    target: str  # as the user wrote it
    name: str  # class name, or the factory's name
    python_module: types.ModuleType  # where NAME was found (for example_inputs)
    device: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    owned: bool = True  # False: a module-level instance used in place (no copy was needed)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


@contextlib.contextmanager
def _global_rng_kept():
    """Importing the user's code must not move the global RNGs (the guard compares them afterwards)."""
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        random.setstate(python_state)


def split_reference(text: str, what: str, example: str) -> tuple[str, str]:
    """'path/file.py:NAME' or 'pkg.mod:NAME' -> (location, NAME)."""
    location, sep, name = text.rpartition(":")
    if not sep or not location or not name:
        raise UserError(f"{what} '{text}' must look like {example} (a ':' then a name)")
    return location, name


def import_location(location: str, what: str) -> types.ModuleType:
    """Import a .py file path or a dotted module name, turning every failure into a UserError."""
    is_path = location.endswith(".py") or os.sep in location or "/" in location
    try:
        if is_path:
            path = os.path.abspath(location)
            if os.path.isdir(path):
                raise UserError(f"{what} '{location}' is a directory; name a .py file and a name, e.g. {location}/model.py:Model")
            if not os.path.exists(path):
                raise UserError(f"{what} file '{location}' does not exist (from {os.getcwd()})")
            digest = hashlib.sha1(path.encode()).hexdigest()[:10]
            module_name = f"model_expert_user_{os.path.splitext(os.path.basename(path))[0]}_{digest}"
            if module_name in sys.modules:
                return sys.modules[module_name]
            directory = os.path.dirname(path)
            if directory not in sys.path:
                sys.path.insert(0, directory)  # sibling imports of the user's file
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise UserError(f"{what} '{location}' cannot be imported as Python; name a .py file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                with _global_rng_kept():  # module-level code (an instance built at import) draws random numbers
                    spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            return module
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        with _global_rng_kept():
            return importlib.import_module(location)
    except UserError:
        raise
    except SyntaxError as error:
        raise UserError(f"syntax error in {error.filename or location} line {error.lineno}: {error.msg}; "
                        f"fix the file and run again") from error
    except ModuleNotFoundError as error:
        raise UserError(f"importing {what} '{location}' failed: {_first_line(error)}; "
                        f"install it or run from the directory it is imported from") from error
    except Exception as error:
        raise UserError(f"importing {what} '{location}' raised {type(error).__name__}: {_first_line(error)}") from error


def resolve_name(module: types.ModuleType, name: str, what: str, location: str) -> Any:
    value: Any = module
    for part in name.split("."):
        if not hasattr(value, part):
            available = sorted(n for n, v in vars(module).items()
                               if not n.startswith("_") and (callable(v) or isinstance(v, nn.Module)))
            hint = f"; it defines {', '.join(available[:12])}" if available else ""
            raise UserError(f"{what} '{location}' has no name '{name}'{hint}")
        value = getattr(value, part)
    return value


def parse_ini_value(text: str) -> Any:
    """INI values as Python literals where they parse (512, 0.1, True, [1, 2]), else strings."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def read_config_section(reference: str) -> dict[str, Any]:
    path, section = split_reference(reference, "--config", "config.ini:SECTION")
    if not os.path.isfile(path):
        raise UserError(f"--config file '{path}' does not exist")
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keep the keys' case: they are Python argument names
    try:
        parser.read(path, encoding="utf-8")
    except configparser.Error as error:
        raise UserError(f"--config file '{path}' is not a valid INI file: {_first_line(error)}") from error
    if not parser.has_section(section):
        raise UserError(f"--config file '{path}' has no section [{section}]; it has "
                        f"{', '.join('[' + s + ']' for s in parser.sections()) or 'none'}")
    return {key: parse_ini_value(value) for key, value in parser.items(section)}


def parse_kwargs_json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--kwargs is not valid JSON ({error.msg} at character {error.pos}): {text!r}; "
                        f"write e.g. --kwargs '{{\"hidden_dim\": 512}}'") from None
    if not isinstance(value, dict):
        raise UserError(f"--kwargs must be a JSON object of argument names to values, not {type(value).__name__}")
    return value


def _check_arguments(function: Callable[..., Any], kwargs: dict[str, Any], label: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        accepted = [n for n, p in signature.parameters.items()
                    if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
        raise UserError(f"cannot call {label} with {sorted(kwargs) or 'no arguments'}: {error}; "
                        f"it accepts {', '.join(accepted) or 'no arguments'} (--kwargs / --config)") from None


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise UserError(f"unknown --device '{device}'; expected one of {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA GPU is visible to PyTorch; use --device cpu, "
                        "or --device meta to analyse without memory")


def load_model(target: str, kwargs: dict[str, Any] | None = None, config: str | None = None,
               checkpoint: str | None = None, device: str = "cpu") -> LoadedModel:
    check_device(device)
    location, name = split_reference(target, "TARGET", "path/to/model.py:ClassName or package.module:ClassName")
    python_module = import_location(location, "TARGET")
    obj = resolve_name(python_module, name, "TARGET", location)
    arguments = dict(read_config_section(config)) if config else {}
    arguments.update(kwargs or {})
    owned = True
    if isinstance(obj, nn.Module):
        if arguments:
            raise UserError(f"TARGET '{target}' is a module instance, so --kwargs/--config cannot be applied; "
                            f"point TARGET at its class or a factory function")
        module = obj
        if any(t.device.type != device for t in _tensors(obj)):
            try:
                module = copy_model(obj, device)  # never move the user's own instance
            except Exception as error:
                raise UserError(f"cannot copy instance '{name}' to {device}: {_first_line(error)}") from error
        else:
            owned = False
    elif callable(obj):
        label = f"{name}()"
        _check_arguments(obj, arguments, label)
        rng = torch.get_rng_state()
        try:
            torch.manual_seed(0)  # the same initial weights on every run: reviews are reproducible
            with torch.device(device):
                module = obj(**arguments)
        except UserError:
            raise
        except Exception as error:  # the user's constructor: anything it raises is theirs to fix
            raise UserError(f"building {label} with {arguments or 'no arguments'} raised "
                            f"{type(error).__name__}: {_first_line(error)}") from error
        finally:
            torch.set_rng_state(rng)
        if not isinstance(module, nn.Module):
            raise UserError(f"TARGET '{target}' returned {type(module).__name__}, not a torch.nn.Module")
    else:
        raise UserError(f"TARGET '{target}' is a {type(obj).__name__}, not an nn.Module class, "
                        f"a function returning a module, or a module instance")
    loaded = LoadedModel(module=module, target=target, name=getattr(obj, "__name__", type(obj).__name__),
                         python_module=python_module, device=device, kwargs=arguments, owned=owned)
    if checkpoint:
        load_checkpoint(loaded, checkpoint)
    return loaded


def _tensors(module: nn.Module):
    yield from module.parameters()
    yield from module.buffers()


def _unpickling_reason(error: BaseException) -> str:
    """torch's weights_only refusal, reduced to its cause (its text also suggests weights_only=False: we never do)."""
    text = str(error)
    if "GLOBAL" in text:
        blocked = next((line.strip() for line in text.splitlines() if "GLOBAL" in line), "")
        return (f"it would run code when loaded ({blocked}); loading always uses weights_only=True, so it did not run. "
                f"Save a plain state_dict of tensors instead")
    if "Unsupported operand" in text or "invalid load key" in text:
        return "it is not a PyTorch checkpoint (not a pickle of tensors); check the path"
    return f"weights_only=True loading failed ({_first_line(error)})"


def load_checkpoint(loaded: LoadedModel, path: str) -> None:
    """Load a state dict with weights_only=True; name missing and unexpected keys."""
    if not os.path.isfile(path):
        raise UserError(f"--checkpoint '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UserError(f"--checkpoint '{path}' was refused: {_unpickling_reason(error)}") from None
    except Exception as error:
        raise UserError(f"--checkpoint '{path}' is not a PyTorch checkpoint: {type(error).__name__}: "
                        f"{_first_line(error)}") from None
    wrapper_key = None
    if isinstance(state, dict):
        for key in _STATE_DICT_KEYS:
            if isinstance(state.get(key), dict) and not isinstance(state.get(key), torch.Tensor):
                state, wrapper_key = state[key], key
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--checkpoint '{path}' holds no state dict of tensors (looked at the top level "
                        f"and under {', '.join(_STATE_DICT_KEYS)})")
    if not loaded.owned:
        loaded.module = copy_model(loaded.module)
        loaded.owned = True
    expected = loaded.module.state_dict()
    prefix = strip_wrapper_prefixes(list(state), set(expected)) if set(state) != set(expected) else None
    if prefix:
        state = {key[len(prefix):]: value for key, value in state.items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
        if mismatched:
            parts.append(f"wrong shapes for {len(mismatched)} key(s): {'; '.join(mismatched[:3])}")
        prefixed = [p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in unexpected)]
        if prefixed:
            parts.append(f"{sum(k.startswith(tuple(prefixed)) for k in unexpected)} unexpected key(s) start with "
                         f"'{prefixed[0]}' (a DistributedDataParallel/torch.compile wrapper's prefix) but removing it "
                         f"does not give the model's keys: save model.module.state_dict() (or strip the prefix) for "
                         f"{loaded.name}")
        raise UserError(f"--checkpoint '{path}' does not match {loaded.name}: {'; '.join(parts)}")
    if mismatched:
        raise UserError(f"--checkpoint '{path}' has wrong shapes for {len(mismatched)} key(s): "
                        f"{'; '.join(mismatched[:3])}")
    info = {"path": path, "tensors": len(state), "wrapper_key": wrapper_key, "prefix_stripped": prefix,
            "loaded": loaded.device != "meta"}
    info["summary"] = checkpoint_summary(info)
    checkpoints_loaded.append(info)
    if loaded.device == "meta":
        return  # shapes and names are checked; meta tensors hold no values to load
    loaded.module.load_state_dict(state, strict=True)
    loaded.checkpoint = path


class NoInputsError(UserError):
    """No input options and no example inputs on the target."""


def default_input_source(loaded: LoadedModel) -> InputSource:
    """The model's own inputs before its file's: its `example_inputs` (a static or class method, or an
    instance method called on the built model), else Lightning's `example_input_array` attribute, else
    a module-level `example_inputs()` beside the target, else a how-to error."""
    method = getattr(loaded.module, "example_inputs", None)
    if callable(method) and not isinstance(method, nn.Module):
        return FactoryInputs(method, f"{loaded.name}.example_inputs()")
    array = getattr(loaded.module, "example_input_array", None)
    if array is not None:
        return FixedInputs(array, f"{loaded.name}.example_input_array")
    function = getattr(loaded.python_module, "example_inputs", None)
    if callable(function) and not isinstance(function, nn.Module):
        return FactoryInputs(function, "example_inputs()")
    raise NoInputsError(f"no inputs for {loaded.name}: pass --input for each forward argument, e.g. "
                    f"--input 'float32[B=8,T=128,512]' --input 'mask=bool[B,T]', or --inputs file.py:make_inputs, "
                    f"or define example_inputs() in {loaded.target.rpartition(':')[0]}")


def load_function(reference: str, what: str) -> Callable[..., Any]:
    location, name = split_reference(reference, what, "file.py:function_name")
    module = import_location(location, what)
    function = resolve_name(module, name, what, location)
    if not callable(function):
        raise UserError(f"{what} '{reference}' is a {type(function).__name__}, not a function")
    return function
