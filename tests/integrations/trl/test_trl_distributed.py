"""Two CPU processes (torchrun, gloo) give the same KTAE advantages as one process on the whole batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "two_process_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_one_process(tiny_model_dir, tmp_path):
    result = tmp_path / "result.json"
    # 6 rows per process, groups of 4: group 1 straddles the processes (gathered path);
    # 8 rows per process, groups of 4: each process holds whole groups (local path).
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(WORKER),
        tiny_model_dir,
        str(tmp_path / "out"),
        str(result),
        "6:4",
        "8:4",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, completed.stderr[-4000:]
    outcomes = json.loads(result.read_text())
    assert [(o["world_size"], o["rows"], o["rounds"]) for o in outcomes] == [(2, 12, 2), (2, 16, 2)]
    for outcome in outcomes:
        assert outcome["equal"] and outcome["max_abs_diff"] == 0.0
        assert outcome["nonzero_bonus"]  # the comparison covers real token-level bonuses
