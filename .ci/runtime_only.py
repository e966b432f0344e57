"""Check that the environment `make quickstart` sets up holds no package of the dev or tracking extras
(issue 20: the quickstart installs only what it needs). Run with that environment's Python."""

from __future__ import annotations

import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path


def names(requirements: list[str]) -> set[str]:
    """Distribution names of requirement strings, normalised (PEP 503); self-references dropped."""
    found = {re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] for requirement in requirements}
    return {re.sub(r"[-_.]+", "-", name).lower() for name in found} - {"sbmoe"}


project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
extras = project["optional-dependencies"]
forbidden = (names(extras["dev"]) | names(extras["tracking"])) - names(project["dependencies"])
forbidden -= names(extras["minilm"])  # the packaged encoder is the quickstart's base
installed = {re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower() for dist in importlib.metadata.distributions()}
present = sorted(forbidden & installed)
if present:
    sys.exit(f"the quickstart's environment holds dev or tracking packages: {present}")
print(f"the quickstart's environment holds none of the {len(forbidden)} dev and tracking packages")
