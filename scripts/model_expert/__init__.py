"""model-expert: measured numbers for reviews of PyTorch models.

Layers (nothing imports upward):
  plumbing   errors, specs (--input grammar), target (loading), inputs, guard, runner, cli, render
  analyses   params, trace, grads, lint, memory/, flops, recommend
  top        report, compare, grounding, init
"""

__version__ = "0.1.0"
