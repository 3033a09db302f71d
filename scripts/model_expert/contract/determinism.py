"""Do two eval forwards agree exactly? Training-mode forwards differing (dropout) is an INFO."""

from __future__ import annotations

from typing import Any

from ..guard import preserved
from .core import Harness, compare, finding


def analyse_determinism(harness: Harness) -> tuple[dict[str, Any], list[dict]]:
    first, second = harness.run(harness.inputs), harness.run(harness.inputs)
    eval_comparison = compare(first, second)
    eval_change = eval_comparison.max_abs_change
    moved = max(eval_comparison.per_output, key=lambda n: eval_comparison.per_output[n][0], default=None)
    with preserved(harness.model):  # train mode updates BatchNorm's running statistics
        train_change = compare(harness.run(harness.inputs, train=True, seed=1),
                               harness.run(harness.inputs, train=True, seed=2)).max_abs_change
    findings = []
    if eval_change != 0.0:
        findings.append(finding("CAUTION", "determinism", f"two eval forwards on the same inputs differ by up to "
                                f"{eval_change:.3g} (`{moved}`); results are not reproducible", output=moved,
                                fix="look for randomness outside nn.Dropout (torch.rand in forward) or "
                                    "non-deterministic kernels"))
    if train_change != 0.0:
        findings.append(finding("INFO", "determinism", f"training-mode forwards are stochastic (dropout): two seeds "
                                f"differ by up to {train_change:.3g}; call model.eval() for inference"))
    return {"eval_identical": eval_change == 0.0, "eval_max_abs_change": eval_change,
            "train_stochastic": train_change != 0.0, "train_max_abs_change": train_change}, findings
