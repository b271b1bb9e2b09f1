"""Answer-checking worker process: ``python -m ktae.rewards._worker [--parent-pid N] [--memory-limit-mb N]``.

The worker end of `ktae.rewards.checker_pool` (which starts these processes and holds the parent end).

Reads one JSON task per line on stdin ({"answer", "references", "timeout_s", "grader"}), writes one JSON
verdict per line ({"equivalent", "status"}) on the original stdout, after a {"ready": true} line
once its imports are done. Anything else printed goes to stderr, so it cannot corrupt the protocol.
The parent kills the process if a task overruns its hard deadline; with ``--parent-pid`` the
process also dies with its parent, even in the middle of a task.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent_pid: int) -> None:
    """Exit when process ``parent_pid`` (the one that started this one) exits, even during a long
    check: on Linux the kernel sends SIGKILL (``PR_SET_PDEATHSIG``, which also stops a call
    inside C); elsewhere a thread watches the parent's pid."""
    if sys.platform.startswith("linux"):
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # it died before the request
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktae.rewards._worker")
    parser.add_argument("--memory-limit-mb", type=int, default=None)
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this process exits")
    args = parser.parse_args(argv)
    if args.parent_pid is not None:
        die_with_parent(args.parent_pid)
    # Ctrl-C in the terminal reaches the whole process group; the parent decides, and closes our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    from ktae.rewards.equivalence import load_parser, run_with_deadline

    load_parser()  # before reporting ready: the first task's clock starts then
    if args.memory_limit_mb and os.path.exists("/proc/self/statm"):
        # on top of what the imports mapped (a CUDA build of torch maps gigabytes it never touches)
        import resource

        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + args.memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        task = json.loads(line)
        verdict = run_with_deadline(task["answer"], task["references"], task["timeout_s"], task["grader"])
        protocol.write(json.dumps({"equivalent": verdict.equivalent, "status": verdict.status}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
