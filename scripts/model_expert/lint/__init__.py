"""Autograd lint: read the model's own `forward` code for operations that cut or corrupt the graph,
then run it once to check devices, dtypes and every custom `torch.autograd.Function` (gradcheck).

What is scanned (a written rule, printed with the results):
  * the classes in the MRO of every module in `model.modules()` whose source file lies outside
    torch and outside site-packages/dist-packages; `--scan-libraries` adds third-party library
    classes (Hugging Face, timm, ...). torch's own classes are never scanned.
  * in each such class, its own `forward`, and the methods (`self.helper(...)`) and module-level
    functions of the user's files that it calls, `--follow-depth` levels deep (default 2).
  * a class whose source cannot be read (defined by exec, in a REPL) is listed as skipped with the reason.

The forward runs once, inside guard.preserved; if it raises, the script follows the CLI contract (one
line, exit 2) and the line says what the source read found; `--static-only` lists it without running.

Static rules are heuristics on the syntax tree: they name the line and the reason; the dynamic
checks measure. Every rule, its severity, why it matters and the fix live in RULES, once.

One file per mechanism: rules (the table), sources (which classes are the user's; reading a function),
scanner (the syntax-tree rules), recorder (custom Functions seen in one forward), gradcheck,
device_dtype, analysis (all of them together), cli (options and rendering).
"""

from .analysis import lint_model
from .cli import CAPABILITY
from .device_dtype import check_devices, check_dtypes
from .gradcheck import GRADCHECK_MAX_ELEMENTS, tiny_shapes
from .rules import METHOD_RULES, RULES, SEVERITIES, TORCH_CALL_RULES
from .scanner import _IGNORE_REASONS  # noqa: F401  (the tests read the reasons)

__all__ = ["CAPABILITY", "GRADCHECK_MAX_ELEMENTS", "METHOD_RULES", "RULES", "SEVERITIES", "TORCH_CALL_RULES",
           "check_devices", "check_dtypes", "lint_model", "tiny_shapes"]
