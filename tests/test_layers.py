"""The package's layers: a module imports only from its own layer or lower ones (docs/GUIDE.md, Layout).

Every module under src/sbmoe is parsed, not imported; imports inside functions and under TYPE_CHECKING
count, and so does `importlib.import_module("sbmoe....")` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A name is a top-level module or package of sbmoe; "" is the package itself
# (sbmoe/__init__.py, the facade that loads the model classes on first use) with __main__.
LAYERS: list[set[str]] = [
    {"errors", "io", "distributed", "progress"},
    {"data"},
    {"modeling"},
    {"retrieval"},
    {"evaluation"},
    {"training"},
    {"analysis"},
    {"experiments"},
    {"integrations"},
    {"commands", "", "__main__"},
]
LAYER_OF = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    """sbmoe.x.y -> the layer of x; sbmoe -> the facade's."""
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else ""
    assert name in LAYER_OF, f"sbmoe.{name} is in no layer: add it to LAYERS in {__file__} and to the guide"
    return LAYER_OF[name]


def is_module(dotted: str) -> bool:
    base = SRC.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imported_modules(source: str, package: str) -> list[tuple[int, str]]:
    """(line, module) for every sbmoe module that `source`, a module of `package`, imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, or its parents
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:  # `from sbmoe import modeling` imports the subpackage
                candidate = f"{module}.{alias.name}"
                found.append((node.lineno, candidate if is_module(candidate) else module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    ours = [(line, module) for line, module in found if module == "sbmoe" or module.startswith("sbmoe.")]
    return list(dict.fromkeys(ours))  # one entry for `from m import a, b`


def test_no_module_imports_a_higher_layer():
    problems = []
    for path in sorted((SRC / "sbmoe").rglob("*.py")):
        own = layer(module_name(path))
        own_name = module_name(path)
        package = own_name if path.name == "__init__.py" else own_name.rpartition(".")[0]
        for line, module in imported_modules(path.read_text(encoding="utf-8"), package):
            if layer(module) > own:
                problems.append(
                    f"{path.relative_to(SRC.parent)}:{line} imports {module} "
                    f"(layer {layer(module)}, above its own layer {own})"
                )
    order = " < ".join("(" + ", ".join(sorted(n or "sbmoe" for n in names)) + ")" for names in LAYERS)
    assert not problems, f"layers, bottom to top: {order}\n" + "\n".join(problems)


def test_the_check_sees_imports_in_functions_relative_and_by_name():
    source = (
        "import os\n"
        "def load():\n"
        "    from sbmoe.commands import main\n"
        "    from ..modeling import loading\n"
        "    from . import beir\n"
        "    return importlib.import_module('sbmoe.training.trainer')\n"
    )
    assert imported_modules(source, "sbmoe.data") == [
        (3, "sbmoe.commands"),
        (4, "sbmoe.modeling.loading"),
        (5, "sbmoe.data.beir"),
        (6, "sbmoe.training.trainer"),
    ]
    assert layer("sbmoe.commands") > layer("sbmoe.data.beir") == layer("sbmoe.data")
