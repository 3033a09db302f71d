"""FLOPs of one training step and its time on a card: `counting` (FlopCounterMode per module and phase, the
eager byte model), `kernel_time` (the step's kernels traced on meta under the CUDA rules, each timed),
`roofline` (the --mfu per-phase alternative), `cli` (flops.py). Nothing here imports the package itself."""

from .cli import CAPABILITY, add_arguments, analyse, render_markdown, render_table
from .counting import (EXTRA_FLOP_FORMULAS, OP_RULES, OPTIMIZER_STEPS, PRECISIONS, StepFlopCounter, count_step,
                       optimizer_step_bytes, optimizer_step_flops, phase_bytes, rule_for, step_flops, summarise)
from .roofline import DEFAULT_MFU, estimate_step_time, math_dtype, time_estimate

__all__ = ["CAPABILITY", "DEFAULT_MFU", "EXTRA_FLOP_FORMULAS", "OPTIMIZER_STEPS", "OP_RULES", "PRECISIONS",
           "StepFlopCounter", "add_arguments", "analyse", "count_step", "estimate_step_time", "math_dtype",
           "optimizer_step_bytes", "optimizer_step_flops", "phase_bytes", "render_markdown", "render_table",
           "rule_for", "step_flops", "summarise", "time_estimate"]
