"""Errors a user can act on. The CLI prints their message and exits with status 2, without a traceback."""

from __future__ import annotations

from pathlib import Path


class SbmoeError(Exception):
    """Base class for errors caused by user input (files, flags, configuration)."""


class DataError(SbmoeError):
    """A data file is malformed. The message names the file and, where known, the line."""

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}" if line is None else f"{self.path}, line {line}"
        super().__init__(f"{where}: {problem}")
