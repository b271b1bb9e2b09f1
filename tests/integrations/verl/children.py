"""Child processes the verl tests start and wait for."""

from __future__ import annotations

import subprocess


def finish(processes: dict[str, subprocess.Popen], timeout: float = 300) -> dict[str, tuple[int, str, str]]:
    """Each process's (exit status, stdout, stderr). communicate, not wait: a child that fills its
    pipe would otherwise never exit."""
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=timeout)
        results[name] = (process.returncode, stdout, stderr)
    return results
