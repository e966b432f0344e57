"""Atomic file writes and the provenance written beside every artifact."""

from __future__ import annotations

import errno
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
from typing import IO, Any

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
    with atomic_open(path, "w") as handle:
        handle.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing ("w": UTF-8 text, "wb": bytes); on success it
    replaces `path` in one step, with the permissions `open` would have given. An error removes it."""
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
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
def staged_folder(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it is renamed to `path` in one step.

    A crash or error leaves `path` untouched (absent or as it was) and removes the temporary folder. Without
    `replace`, a `path` that exists and is not an empty folder is refused (`check_new_folder`) before
    anything is written; with it, an existing `path` is moved aside once the new folder is complete, then
    removed (between the two renames `path` is briefly absent, never half written).
    """
    path = Path(path) if replace else check_new_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield staging
        if replace:
            _swap_in(staging, path)
        else:
            if path.exists():
                path.rmdir()
            os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, path: Path, attempts: int = 10) -> None:
    """Rename `staging` to `path`, moving an existing `path` aside first; if another writer puts a folder
    there in between (two processes filling the same cache entry), theirs is moved aside in turn."""
    for _ in range(attempts):
        retired = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
        try:
            try:
                os.replace(path, retired)  # a folder renamed onto an empty folder replaces it
            except FileNotFoundError:
                pass  # nothing to move aside
            os.replace(staging, path)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            shutil.rmtree(retired, ignore_errors=True)
    raise OSError(errno.EEXIST, f"cannot replace {path}: other writers keep replacing it")


@contextmanager
def staged_files(folder: str | Path, *, last: str | None = None) -> Iterator[Path]:
    """Yield a temporary folder inside `folder`; on success every file written there is moved into `folder`
    (each replacing its namesake in one step), `last` after all the others, so that its presence marks a
    complete set. For files that join others in an existing folder; a crash leaves only whole files.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming.", dir=folder))
    try:
        yield staging
        for item in sorted(staging.iterdir(), key=lambda item: (item.name == last, item.name)):
            os.replace(item, folder / item.name)
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
