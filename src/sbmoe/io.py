"""Atomic file writes and the provenance written beside every artifact."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

PROVENANCE_PACKAGES = (
    "sbmoe",
    "torch",
    "transformers",
    "sentence-transformers",
    "numpy",
    "ir-measures",
    "faiss-cpu",
)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and a rename."""
    _atomic_write(path, text, "w", "utf-8")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    _atomic_write(path, data, "wb", None)


def _atomic_write(path: str | Path, content: str | bytes, mode: str, encoding: str | None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as handle:
            handle.write(content)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_new_folder(path: str | Path) -> Path:
    """Refuse a destination that exists and is not an empty folder: nothing written before is replaced."""
    from sbmoe.errors import SbmoeError

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise SbmoeError(f"{path} already exists and is not empty; choose another output folder")
    return path


@contextmanager
def staged_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path` in one step.

    A crash or error leaves `path` untouched (absent or empty) and removes the temporary folder.
    """
    path = check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if path.exists():
            path.rmdir()
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def git_commit() -> str | None:
    """The commit of the sbmoe source tree (with "-dirty" for local changes), or None outside a checkout."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(argv: list[str] | None = None) -> dict[str, Any]:
    """Package versions, git commit, command line and time: enough to re-run and to trust a result."""
    versions = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "command": " ".join(argv if argv is not None else sys.argv),
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }
