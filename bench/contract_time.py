"""Wall time of `contract.py` on the bundled SimilarityTransformer (the agent's padding/set/batch answer).

Prints the in-process contract time (model built and imports done, as inside report.py) and the
end-to-end time of the script as a user runs it, each as wall and CPU seconds, with the machine's load
average (on a shared machine the wall time is mostly waiting). Target: <= 10 s on a 2-core machine.
Usage: python bench/contract_time.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
ARGV = ["examples/similarity_transformer.py:SimilarityTransformer", "--set", "max_images", "--set", "num_models"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    os.chdir(REPO)
    from model_expert.contract.cli import CAPABILITY
    import torch
    in_process = []
    for _ in range(options.repeats):
        started, cpu = time.perf_counter(), time.process_time()
        CAPABILITY.analyse(CAPABILITY.parser().parse_args(ARGV))
        in_process.append((time.perf_counter() - started, time.process_time() - cpu))
    end_to_end = []
    for _ in range(options.repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run([sys.executable, "scripts/contract.py", *ARGV, "--json"], check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        end_to_end.append((time.perf_counter() - started, cpu))
    print(f"contract.py on the bundled SimilarityTransformer (B=8, max_images=64, num_models=32), "
          f"torch {torch.__version__}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    for label, runs in (("in process (inside report.py)", in_process),
                        ("end to end (python scripts/contract.py ... --json)", end_to_end)):
        wall, cpu = min(runs)
        print(f"  {label}: best wall {wall:.2f} s (CPU {cpu:.2f} s) of {options.repeats}")
    print(f"  load average over 1/5/15 min: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
