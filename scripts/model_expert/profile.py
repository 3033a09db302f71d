"""The project profile: what is specific to one project, read from `model-expert.toml` at the repository root or
from `[tool.model-expert]` in `pyproject.toml` (as ruff and pytest read theirs).

Top-level keys describe the project (GPUs, cluster, notes for the reviewer); `[models."TARGET"]` tables give the
options one model is reviewed with (its config section, loss, set dims, parameter groups, masks, frozen and staged
parts). `report.py` and `recommend.py` fill every option the command line leaves unset from the profile; an option
given on the command line always wins. Torch-free: `init` and the CLIs read it before anything heavy.
"""

from __future__ import annotations

import argparse
import os
import tomllib
from typing import Any

from .errors import UserError

PROFILE_FILE = "model-expert.toml"
PYPROJECT_TABLE = ("tool", "model-expert")
# key -> (type, what it means). Top level: the project; [models."TARGET"]: one model's review options.
PROJECT_KEYS: dict[str, tuple[type, str]] = {
    "description": (str, "one line: what the project trains"),
    "gpu": (str, "the single GPU the model is developed on (memory/flops/recommend --gpu)"),
    "cluster_gpu": (str, "the cluster node's GPU (report --cluster-gpu)"),
    "cluster": (str, "the cluster's name, for the launch script and the review"),
    "gpus_per_node": (int, "GPUs per cluster node"),
    "notes": (list, "what the reviewer must check every time (plain sentences)"),
}
MODEL_KEYS: dict[str, tuple[type, str]] = {
    "config": (str, "FILE.ini:SECTION the model is built from (--config)"),
    "loss": (str, "FILE.py:FN, the default loss (--loss)"),
    "set": (list, "input dims that are unordered sets (--set)"),
    "group": (list, "NAME=PREFIX parameter groups that must get gradient (--group)"),
    "mask": (list, "mask inputs that are not bool and not named *mask* (--mask)"),
    "frozen": (list, "parameter-name prefixes frozen on purpose (a no-gradient finding there is expected)"),
    "staged": (str, "how training is staged, e.g. 'autoencoder first, then frozen'"),
}
# model keys that become command-line options when unset (the rest are read by the reviewer)
OPTION_KEYS = ("config", "loss", "set", "group", "mask")
PROJECT_OPTION_KEYS = ("gpu", "cluster_gpu", "gpus_per_node")
# the scripts that read the profile (the others take their options from the command line only)
READERS = ("report", "recommend")


def find(start: str | None = None) -> tuple[str, dict[str, Any]] | None:
    """(path, table) of the nearest profile from START (default: the working directory) up to the filesystem root:
    model-expert.toml first, then pyproject.toml's [tool.model-expert]; None if neither exists."""
    directory = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(directory, PROFILE_FILE)
        if os.path.isfile(candidate):
            return candidate, _validated(candidate, _read(candidate))
        pyproject = os.path.join(directory, "pyproject.toml")
        if os.path.isfile(pyproject):
            table = _read(pyproject)
            for key in PYPROJECT_TABLE:
                table = table.get(key) if isinstance(table, dict) else None
            if isinstance(table, dict):
                return f"{pyproject} [tool.model-expert]", _validated(pyproject, table)
        parent = os.path.dirname(directory)
        if parent == directory:
            return None
        directory = parent


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path} is not valid TOML ({error}); fix it or remove it") from None


def _check(path: str, where: str, table: dict[str, Any], keys: dict[str, tuple[type, str]]) -> None:
    for key, value in table.items():
        if key not in keys:
            raise UserError(f"{path}: unknown key '{key}' in {where}; expected one of {', '.join(keys)}")
        kind = keys[key][0]
        if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
            raise UserError(f"{path}: '{key}' in {where} must be {'a list of strings' if kind is list else kind.__name__}"
                            f", not {value!r}")


def _validated(path: str, table: dict[str, Any]) -> dict[str, Any]:
    models = table.get("models", {})
    if not isinstance(models, dict):
        raise UserError(f"{path}: 'models' must be a table of [models.\"TARGET\"] tables")
    _check(path, "the top level", {k: v for k, v in table.items() if k != "models"}, PROJECT_KEYS)
    for target, entry in models.items():
        if not isinstance(entry, dict):
            raise UserError(f"{path}: models.\"{target}\" must be a table")
        _check(path, f'models."{target}"', entry, MODEL_KEYS)
    return table


def model_entry(table: dict[str, Any], target: str) -> dict[str, Any]:
    """The [models."TARGET"] table for TARGET as written on the command line (a leading ./ ignored)."""
    models = table.get("models", {})
    return models.get(target) or models.get(target.removeprefix("./")) or {}


def apply(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any] | None:
    """Fill ARGS' unset options (still at the parser's default) from the profile; returns what was applied, with
    the profile's path, or None when there is no profile."""
    found = find()
    if found is None:
        return None
    path, table = found
    entry = model_entry(table, getattr(args, "target", "") or "")
    applied: dict[str, Any] = {}
    for key, value in [*((k, entry[k]) for k in OPTION_KEYS if k in entry),
                       *((k, table[k]) for k in PROJECT_OPTION_KEYS if k in table)]:
        if hasattr(args, key) and getattr(args, key) == parser.get_default(key):
            setattr(args, key, list(value) if isinstance(value, list) else value)
            applied[key] = value
    return {"path": path, "applied": applied, "model": entry,
            "project": {k: v for k, v in table.items() if k != "models"}}
