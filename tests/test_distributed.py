"""Two CPU processes (gloo): gradients through `gather_anchors` equal single-process gradients on the global batch.

The two processes are started by `accelerate launch` in a fresh interpreter (tests/distributed_gather_worker.py),
on a free port. Forking them from the pytest process (accelerate's `debug_launcher`) deadlocks once an earlier
test has started torch's OpenMP thread pool, and its fixed port 29500 collides with other runs.
"""

import os
import subprocess
import sys
from pathlib import Path

from lzn_test_utils import free_port

WORKER = Path(__file__).with_name("distributed_gather_worker.py")


def test_gather_anchors_gradients_match_single_process():
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
               "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), str(WORKER)]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}  # gloo on CPU
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"workers failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    assert result.stdout.count("gradients match") == 1  # printed by the main process once both ranks passed
