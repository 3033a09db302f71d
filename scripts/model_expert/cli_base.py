"""Torch-free command-line plumbing, shared by every tool (the JSON-only ones import nothing heavier)."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import traceback
from typing import Any, Callable, TypeVar

from .errors import UserError

T = TypeVar("T")


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), not the whole usage block."""

    def error(self, message: str):  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}; see {self.prog} --help\n")
        sys.exit(2)


def json_safe(value: Any) -> Any:
    """Non-finite floats become the strings 'nan', 'inf', '-inf' so the JSON stays valid."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def to_json(data: dict[str, Any]) -> str:
    return json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Write to a temp file beside PATH, then rename: a reader never sees half a file."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    handle, temp = tempfile.mkstemp(dir=directory, prefix=".model-expert-", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise


def usable_cpus() -> tuple[int, str]:
    """(CPUs this process may run on, where that came from): os.sched_getaffinity (taskset, cpusets, SLURM's
    binding), lowered by a cgroup v2 CPU quota (containers) when one is set."""
    try:
        count, source = len(os.sched_getaffinity(0)), "os.sched_getaffinity"
    except (AttributeError, OSError):
        count, source = os.cpu_count() or 1, "os.cpu_count"
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as stream:
            quota, period = stream.read().split()[:2]
        if quota != "max" and int(period) > 0:
            allowed = max(1, math.ceil(int(quota) / int(period)))
            if allowed < count:
                count, source = allowed, "the cgroup CPU quota (/sys/fs/cgroup/cpu.max)"
    except (OSError, ValueError):
        pass
    return count, source


def configure_threads(torch_module: Any = None) -> dict[str, Any]:
    """torch's intra-op threads = the CPUs this process may use (usable_cpus), unless OMP_NUM_THREADS says
    otherwise; inter-op threads likewise (the tools run no inter-op parallel work of their own). More threads than
    CPUs make torch's threads wait on each other whenever anything else runs. TORCH_MODULE: torch, when imported
    (None: a torch-free tool, nothing to set). Returns {threads, source}: what the --debug line and the review state."""
    cpus, source = usable_cpus()
    threads, requested = cpus, os.environ.get("OMP_NUM_THREADS", "").strip()
    if requested.isdigit() and int(requested) > 0:
        threads, source = int(requested), "OMP_NUM_THREADS"
    if torch_module is not None:
        torch_module.set_num_threads(threads)
        try:
            torch_module.set_num_interop_threads(threads)
        except RuntimeError:  # already started (a second call in one process): it keeps its first size
            pass
        threads = torch_module.get_num_threads()
    return {"threads": threads, "source": source}


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json and --debug, as every tool has them."""
    parser.add_argument("--json", action="store_true", help="print one JSON object with a 'schema' key")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")


def call_reporting_errors(prog: str, debug: bool, work: Callable[[], T]) -> tuple[T | None, int]:
    """(work(), 0), or (None, 2) after one stderr line when it raises a UserError (the traceback with --debug)."""
    try:
        return work(), 0
    except UserError as error:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"{prog}: error: {error}\n")
        return None, error.exit_code
