"""Answer-checking worker process: ``python -m ktae.rewards._worker [--memory-limit-mb N]``.

Reads one JSON task per line on stdin ({"answer", "references", "timeout_s"}), writes one JSON
verdict per line ({"equivalent", "status"}) on the original stdout, after a {"ready": true} line
once its imports are done. Anything else printed goes to stderr, so it cannot corrupt the protocol.
The parent kills the process if a task overruns its hard deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktae.rewards._worker")
    parser.add_argument("--memory-limit-mb", type=int, default=None)
    args = parser.parse_args(argv)
    # Ctrl-C in the terminal reaches the whole process group; the parent decides, and closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from ktae.rewards.equivalence import _parse, run_with_deadline

    _parse("0")  # import math-verify, sympy and the LaTeX parser before reporting ready
    if args.memory_limit_mb and os.path.exists("/proc/self/statm"):
        # on top of what the imports mapped (a CUDA build of torch maps gigabytes it never touches)
        import resource

        mapped = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + args.memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        task = json.loads(line)
        verdict = run_with_deadline(task["answer"], task["references"], float(task["timeout_s"]))
        protocol.write(json.dumps({"equivalent": verdict.equivalent, "status": verdict.status}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
