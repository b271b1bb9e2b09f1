"""Run-folder arguments of the report builders."""

from __future__ import annotations

import os
from pathlib import Path


def run_folders(run_dirs, caller: str) -> list[Path]:
    """One run folder or several as a non-empty list of Paths; ``caller`` names the function in the error."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(path) for path in run_dirs]
    if not run_dirs:
        raise ValueError(f"{caller} needs at least one run folder")
    return run_dirs
