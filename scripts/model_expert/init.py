"""`model-expert init [DIR]`: install the reviewer (agent, slash command, permission, project profile) into another repository.

There the scripts are the installed `model-expert` console command, so the copied agent and command
call `model-expert <capability>` instead of `python scripts/<capability>.py`, and the permission
allows exactly that command. The agent's example commands name this repository's bundled example files;
the installed copy names placeholders instead (TARGET, FILE.ini:SECTION), so it names no file the other
repository lacks. An existing settings.json keeps everything it had; an existing model-expert.toml is kept.
"""

from __future__ import annotations

import json
import os
import re
import sys

from .cli import OneLineArgumentParser, write_atomically
from .errors import UserError

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "claude")
FILES = ("agents/model-expert.md", "commands/review-model.md")
INSTALLED_PERMISSION = "Bash(model-expert *)"
_SCRIPT_CALL = re.compile(r"python scripts/(?:<name>|([a-z_]+))\.py")
_SCRIPT_NAME = re.compile(r"`([a-z_]+)\.py\b")
PROFILE_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "model-expert.template.toml")
# This repository's example files as the agent's commands name them -> the placeholders the installed agent shows
# (longest first, so an option with its value goes before the bare target).
EXAMPLE_PLACEHOLDERS = (
    ("--group model_path=model_proj --group dataset_path=dataset_proj", "--group NAME=PREFIX"),
    ("--set max_images --set num_models", "--set DIM"),
    ("--config examples/config.ini:similarity_transformer", "--config FILE.ini:SECTION"),
    ("--config examples/config.ini:autoencoder", "--config FILE.ini:SECTION"),
    ("--loss examples/ranking_loss.py:ranking_loss", "--loss FILE.py:FN"),
    ("examples/similarity_transformer.py:SimilarityTransformer", "TARGET"),
    ("examples/autoencoder.py:ModelAutoEncoder", "TARGET"),
    ("--input 'float32[B=8,T=64,512]' --input 'bool[B,T]' --input 'float32[M=32,512]' --vary T=64,128",
     "--input 'float32[B=8,T=64,512]' --vary T=64,128"),
    ("The commands below review this repository's example; put the user's TARGET and options in its place.",
     "Put the user's TARGET and options (the profile's, when it has them) in the commands below."),
)


def installed_text(text: str) -> str:
    """`python scripts/params.py` -> `model-expert params` (and the `<name>` placeholder likewise); the bundled
    example's files -> placeholders."""
    for example, placeholder in EXAMPLE_PLACEHOLDERS:
        text = text.replace(example, placeholder)
    text = _SCRIPT_CALL.sub(lambda m: f"model-expert {m.group(1) or '<name>'}", text)
    return _SCRIPT_NAME.sub(lambda m: f"`model-expert {m.group(1)}", text)  # prose: `contract.py` -> `model-expert contract`


def merged_settings(existing: dict) -> dict:
    settings = dict(existing)
    permissions = dict(settings.get("permissions") or {})
    allow = list(permissions.get("allow") or [])
    if INSTALLED_PERMISSION not in allow:
        allow.append(INSTALLED_PERMISSION)
    permissions["allow"] = allow
    settings["permissions"] = permissions
    return settings


def install(directory: str, force: bool = False) -> list[str]:
    """Write the files (all checked before any is written); returns the paths written."""
    if not os.path.isdir(directory):
        raise UserError(f"'{directory}' is not a directory; create it or name the repository root")
    claude_dir = os.path.join(directory, ".claude")
    planned: list[tuple[str, str]] = []
    for relative in FILES:
        with open(os.path.join(ASSETS, relative), encoding="utf-8") as stream:
            text = installed_text(stream.read())
        destination = os.path.join(claude_dir, relative)
        if os.path.exists(destination) and not force:
            with open(destination, encoding="utf-8") as stream:
                if stream.read() != text:
                    raise UserError(f"{destination} exists and differs; pass --force to replace it")
        planned.append((destination, text))
    settings_path = os.path.join(claude_dir, "settings.json")
    existing = {}
    if os.path.exists(settings_path):
        try:
            with open(settings_path, encoding="utf-8") as stream:
                existing = json.load(stream)
        except (json.JSONDecodeError, OSError) as error:
            raise UserError(f"{settings_path} is not valid JSON ({error}); fix it first") from None
        if not isinstance(existing, dict):
            raise UserError(f"{settings_path} must hold a JSON object")
    planned.append((settings_path, json.dumps(merged_settings(existing), indent=2) + "\n"))
    profile_path = os.path.join(directory, "model-expert.toml")
    if not os.path.exists(profile_path):  # the user's own profile is never replaced
        with open(PROFILE_TEMPLATE, encoding="utf-8") as stream:
            planned.append((profile_path, stream.read()))
    for destination, text in planned:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        write_atomically(destination, text)
    return [destination for destination, _ in planned]


def main(argv: list[str] | None = None, prog: str = "model-expert init") -> int:
    parser = OneLineArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", default=".", help="repository root (default: current directory)")
    parser.add_argument("--force", action="store_true", help="replace an existing, different agent or command file")
    args = parser.parse_args(argv)
    try:
        written = install(args.directory, force=args.force)
    except UserError as error:
        sys.stderr.write(f"{parser.prog}: error: {error}\n")
        return 2
    for path in written:
        print(f"wrote {path}")
    print("The model-expert agent and /review-model are ready; they call the installed `model-expert` command. "
          "Fill in model-expert.toml (the project profile) so reviews use your set dims, loss, config and GPUs.")
    return 0
