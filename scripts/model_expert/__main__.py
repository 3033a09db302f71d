"""`model-expert <capability> ...`: the same CLIs as scripts/<capability>.py."""

from __future__ import annotations

import importlib
import sys

from .registry import CAPABILITIES, load


def usage() -> str:
    """One line per capability: its name and what it does (its CAPABILITY's description, or its docstring)."""
    lines = ["usage: model-expert CAPABILITY [options]   (model-expert CAPABILITY --help for its options)", "",
             "capabilities:"]
    for name in CAPABILITIES:
        module = load(name)
        if module is None:
            continue
        capability = getattr(module, "CAPABILITY", None)
        text = capability.description if capability is not None else (module.__doc__ or "").strip()
        lines.append(f"  {name:<16}{text.splitlines()[0] if text else ''}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in CAPABILITIES:
        sys.stderr.write(f"model-expert: error: unknown capability '{name}'; expected one of {', '.join(CAPABILITIES)}\n")
        return 2
    module = importlib.import_module(CAPABILITIES[name])
    if hasattr(module, "CAPABILITY"):
        from .cli import main as run
        return run(module.CAPABILITY, rest, prog=f"model-expert {name}")
    return module.main(rest, prog=f"model-expert {name}")


if __name__ == "__main__":
    sys.exit(main())
