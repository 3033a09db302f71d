"""Every capability by name -> the module that holds it (a CAPABILITY, or a main(argv) for JSON-only tools).

The one table the console command, the report and recommend look capabilities up in.
"""

from __future__ import annotations

import importlib
from types import ModuleType

CAPABILITIES = {
    "params": "model_expert.params",
    "trace": "model_expert.trace",
    "lint": "model_expert.lint.cli",
    "grads": "model_expert.grads",
    "memory": "model_expert.memory.cli",
    "flops": "model_expert.flops.cli",
    "probe": "model_expert.probe.cli",
    "recommend": "model_expert.recommend",
    "contract": "model_expert.contract.cli",
    "report": "model_expert.report",
    "check_grounding": "model_expert.grounding",
    "compare": "model_expert.compare",
    "init": "model_expert.init",
}


def load(name: str) -> ModuleType | None:
    """The capability's module, or None when this installation lacks it."""
    try:
        return importlib.import_module(CAPABILITIES[name])
    except ModuleNotFoundError:
        return None
