"""Importing torchvision's models beside the CPU torch, for the benchmarks.

Installed apart from the environment, so nothing else imports a torchvision that cannot load its ops
(torchmetrics and Lightning would): `pip install --no-deps --target .vision torchvision==0.28.0` (the
pair of torch 2.13.0) puts it in the repository's ignored .vision/, which this module puts on sys.path.

PyPI's torchvision 0.28.0 wheel is built against CUDA: its C++ extension (_C.so, which needs libc10_cuda.so) does
not load beside torch 2.13.0's CPU build, and torchvision/_meta_registrations.py then fails on import because the
ops it registers fake kernels for (torchvision::nms, roi_align, ...) were never defined. The classification models
(resnet50, vit_b_16, convnext_tiny) are pure Python and need none of those ops, so that one module is skipped.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

VISION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".vision")


def torchvision_status() -> str:
    """Imports torchvision (skipping its meta registrations where its C++ ops cannot load) and says how."""
    if os.path.isdir(VISION_DIR) and VISION_DIR not in sys.path:
        sys.path.append(VISION_DIR)
    try:
        import torchvision  # noqa: F401
        return f"torchvision {torchvision.__version__} with its C++ ops"
    except ModuleNotFoundError:
        return "torchvision is not installed: pip install --no-deps --target .vision torchvision==0.28.0"
    except RuntimeError:
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        torchvision = importlib.import_module("torchvision")
        return (f"torchvision {torchvision.__version__} without its C++ ops (a CUDA build beside the CPU torch: "
                "the models are pure Python)")
