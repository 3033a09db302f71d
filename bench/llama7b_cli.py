"""Llama-7B-shaped config through the real CLIs: params, FLOPs and training memory, one call each.

Prints each call's wall time, the time beyond importing torch + transformers (a separate
`python -c "import torch, transformers"` run, median of 3), and the child's peak RSS (wait4).
Targets (issue 3): <= 10 s per call beyond the imports, peak RSS <= 1.5 GB, on a 2-core machine.

    python bench/llama7b_cli.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FACTORY = REPO / "bench" / "_llama7b_factory.py"
TOKENS = "input_ids=int64[B=1,T=2048]<32000"
CALLS = {
    "params": ["params", f"{FACTORY}:llama_7b", "--device", "meta", "--json"],
    "flops": ["flops", f"{FACTORY}:llama_7b", "--device", "meta", "--input", TOKENS, "--precision", "bf16-autocast",
              "--gpu", "a100-80gb", "--json"],
    "memory": ["memory", f"{FACTORY}:llama_7b", "--device", "meta", "--input", TOKENS, "--input", "labels=int64[B,T]<32000",
               "--precision", "bf16-autocast", "--gpu", "h100-80gb", "--json"],
}


def run(argv: list[str]) -> tuple[float, int, int]:
    """(wall seconds, peak RSS bytes, exit code) of one child process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    return elapsed, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status)


def main() -> int:
    FACTORY.write_text(
        "import transformers\n\n\ndef llama_7b():\n    return transformers.LlamaForCausalLM(transformers.LlamaConfig(\n"
        "        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,\n"
        "        num_key_value_heads=32, vocab_size=32000))\n")
    try:
        imports = statistics.median(run([sys.executable, "-c", "import torch, transformers"])[0] for _ in range(3))
        print(f"import torch + transformers: {imports:.2f} s (median of 3)")
        print(f"{'call':8} {'wall':>8} {'beyond imports':>15} {'peak RSS':>10}  target")
        ok = True
        for name, args in CALLS.items():
            wall, rss, code = run([sys.executable, str(REPO / "scripts" / f"{args[0]}.py"), *args[1:]])
            beyond = wall - imports
            passed = code == 0 and beyond <= 10 and rss <= 1.5e9
            ok &= passed
            print(f"{name:8} {wall:7.2f}s {beyond:14.2f}s {rss / 2**30:8.2f} GiB  {'ok' if passed else 'MISSED'}"
                  f"{'' if code == 0 else f' (exit {code})'}")
        return 0 if ok else 1
    finally:
        FACTORY.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
