"""Progress bars: drawn only when the output is a terminal; `TQDM_DISABLE=1` hides them, and so does
progress=False (`--no-progress`)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


def progress_bar(iterable: Iterable | None = None, *, progress: bool = True, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, hidden when not `progress`, and otherwise drawn on a terminal only."""
    if not progress:
        kwargs["disable"] = True
    elif "TQDM_DISABLE" not in os.environ:  # tqdm reads it as the default of `disable`: not overridden then
        kwargs["disable"] = None  # None: only if the output is a terminal
    return tqdm(iterable, **kwargs)
