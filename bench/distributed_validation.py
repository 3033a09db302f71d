"""memory.py --world-size N --strategy S (CPU target) against real torchrun runs on gloo, N = 2 and 4: the busiest
rank's real peak (CPU allocator events, highest over three steady steps and RUNS launches) beside the prediction.

  python bench/distributed_validation.py [--runs 2]   (prints a markdown table; about 2-4 minutes on 2 cores)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))

from model_expert.memory.cli import CAPABILITY, analyse  # noqa: E402

MODELS = os.path.join(REPO, "tests", "fixtures", "dp_models.py")
CASES = {"ResidualMLP": "residual_mlp_inputs", "SetTransformer": "set_transformer_inputs"}
STRATEGIES = ("ddp", "zero1", "zero2", "fsdp")


def real_peaks(world_size: int, runs: int) -> dict:
    merged: dict = {}
    for run in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            out = os.path.join(folder, "peaks.json")
            command = ["torchrun", "--standalone", "--nproc-per-node", str(world_size),
                       os.path.join(REPO, "tests", "dp_worker.py"), "--out", out]
            for name, inputs in CASES.items():
                command += ["--model", f"{MODELS}:{name}:{inputs}"]
            subprocess.run(command, cwd=REPO, check=True, capture_output=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
            with open(out) as handle:
                for name, by_strategy in json.load(handle).items():
                    for strategy, peaks in by_strategy.items():
                        merged.setdefault(name, {}).setdefault(strategy, []).append(max(peaks))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--world-sizes", default="2,4")
    args = parser.parse_args()
    print("| model | strategy | ranks | predicted (busiest rank) | real, busiest rank, max of runs | error | runs |")
    print("|---|---|---|---|---|---|---|")
    for world_size in (int(n) for n in args.world_sizes.split(",")):
        peaks = real_peaks(world_size, args.runs)
        for name, inputs in CASES.items():
            for strategy in STRATEGIES:
                data = analyse(CAPABILITY.parser().parse_args(
                    [f"{MODELS}:{name}", "--inputs", f"{MODELS}:{inputs}", "--target-device", "cpu",
                     "--world-size", str(world_size), "--strategy", strategy]))
                real = max(peaks[name][strategy])
                error = 100.0 * (data["per_gpu_peak_bytes"] - real) / real
                print(f"| {name} | {strategy} | {world_size} | {data['per_gpu_peak_bytes']:,} | {real:,} | "
                      f"{error:+.1f}% | {', '.join(f'{p:,}' for p in peaks[name][strategy])} |", flush=True)


if __name__ == "__main__":
    main()
