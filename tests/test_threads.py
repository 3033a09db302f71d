"""Every script sizes torch's thread pool to the CPUs the process may use (os.sched_getaffinity), not the machine's."""

import os
import subprocess
import sys

import pytest

from conftest import REPO, SCRIPTS

TARGET = "tests/fixtures/models.py:TinyMLP"


def debug_threads_line(env_extra: dict[str, str] | None = None, cpus: set[int] | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, str(SCRIPTS / "params.py"), TARGET, "--debug"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stderr.splitlines() if "intra-op thread" in line)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs os.sched_setaffinity (Linux)")
def test_threads_follow_the_cpus_the_process_may_use():
    one_cpu = {min(os.sched_getaffinity(0))}
    assert debug_threads_line(cpus=one_cpu) == "params.py: torch runs 1 intra-op thread (os.sched_getaffinity)"
    allowed = len(os.sched_getaffinity(0))
    line = debug_threads_line()
    assert line.startswith(f"params.py: torch runs {allowed} intra-op thread"), line


def test_omp_num_threads_wins():
    line = debug_threads_line({"OMP_NUM_THREADS": "3"})
    assert line == "params.py: torch runs 3 intra-op threads (OMP_NUM_THREADS)"
