"""Run folders in, report files out (written atomically)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def run_folders(run_dirs, caller: str) -> list[Path]:
    """One run folder or several as a non-empty list of Paths; ``caller`` names the function in the error."""
    if isinstance(run_dirs, (str, os.PathLike)):
        run_dirs = [run_dirs]
    run_dirs = [Path(path) for path in run_dirs]
    if not run_dirs:
        raise ValueError(f"{caller} needs at least one run folder")
    return run_dirs


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, content: str | bytes) -> Path:
    """Write a file through a temp file and ``os.replace``, so readers never see half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp makes files private; a report is meant to be shared
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
