"""The README and the user guide: every `sbmoe` example names a subcommand whose --help exits 0 and lists
each flag the example uses; the README stays short and its links into the guide resolve.

Fast and offline: no example is run, only its command's --help (through `sbmoe.commands.main`).
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from sbmoe.commands import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDE = ROOT / "docs" / "GUIDE.md"
README_LIMIT = 8_000  # the README stays under this many characters (issue 21); detail goes to the guide
SHELL_BLOCKS = ("```bash", "```console")
LAUNCHED = " -m sbmoe "  # torchrun / accelerate launch ... -m sbmoe ARGS


def console_examples(markdown: str) -> list[str]:
    """The `sbmoe ...` command lines of the ```bash and ```console blocks of a Markdown text, backslash
    continuations joined and a leading `$ ` removed; a launcher's `... -m sbmoe ARGS` becomes `sbmoe ARGS`.
    Output lines and other programs' commands are left out."""
    examples, in_block, pending = [], False, ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_block = not in_block and stripped.startswith(SHELL_BLOCKS)
            pending = ""
            continue
        if not in_block:
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1].rstrip() + " "
            continue
        command, pending = (pending + stripped).removeprefix("$ "), ""
        if command.startswith("sbmoe "):
            examples.append(command)
        elif LAUNCHED in command:
            examples.append("sbmoe " + command.split(LAUNCHED, 1)[1])
    return examples


def command_path(words: list[str]) -> list[str]:
    """The (sub)command names at the start of `sbmoe`'s arguments: ["data", "validate"] for
    `data validate arguana`, ["evaluate"] for `evaluate --model ...`."""
    parser, path = build_parser(), []
    for word in words:
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subparsers or word not in subparsers[0].choices:
            break
        parser = subparsers[0].choices[word]
        path.append(word)
    return path


def help_of(path: list[str], capsys) -> tuple[int, str]:
    """(exit status, printed help) of `sbmoe PATH --help`, in this process."""
    with pytest.raises(SystemExit) as stopped:
        main([*path, "--help"])
    captured = capsys.readouterr()
    return stopped.value.code, captured.out + captured.err


def flags(words: list[str]) -> list[str]:
    """The long options an example uses (`--split` of `--split=test` too)."""
    return [word.split("=", 1)[0] for word in words if word.startswith("--")]


def unknown_flags(example: str, capsys) -> list[str]:
    """The flags of `example` that its subcommand's --help does not list; fails if --help does not exit 0."""
    words = shlex.split(example, comments=True)[1:]
    path = command_path(words)
    assert path, f"{example!r} names no sbmoe command"
    code, text = help_of(path, capsys)
    assert code == 0, f"sbmoe {' '.join(path)} --help exited {code}: {text}"
    return [flag for flag in flags(words) if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)]


EXAMPLES = [
    pytest.param(example, id=f"{path.name}:{example[:60].rstrip()}")
    for path in (README, GUIDE)
    for example in console_examples(path.read_text(encoding="utf-8"))
]


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_parses_with_flags_its_help_lists(example, capsys):
    assert unknown_flags(example, capsys) == []


def test_both_documents_have_examples_of_every_task():
    readme, guide = (
        {shlex.split(example)[1] for example in console_examples(path.read_text(encoding="utf-8"))}
        for path in (README, GUIDE)
    )
    assert {"evaluate", "train", "experiment", "report", "index", "search"} <= readme <= guide


def test_a_wrong_flag_or_command_is_caught(capsys):
    assert unknown_flags("sbmoe evaluate --model m --dataset d --seen-splits train", capsys) == [
        "--seen-splits"
    ]
    assert unknown_flags("sbmoe data validate arguana --data-dir d --verbose", capsys) == []
    assert help_of(["evalute"], capsys)[0] == 2  # argparse: invalid choice
    with pytest.raises(AssertionError, match="names no sbmoe command"):
        unknown_flags("sbmoe --model m", capsys)


def test_extraction_joins_continuations_and_skips_output_and_other_blocks():
    markdown = "\n".join(
        [
            "```console",
            "$ sbmoe evaluate --model m \\",
            "    --dataset d   # a comment",
            "dataset  split",
            "```",
            "```python",
            "sbmoe train --not-a-shell-example",
            "```",
            "```bash",
            "torchrun --nproc_per_node 2 -m sbmoe train --base b",
            "make test",
            "```",
        ]
    )
    assert console_examples(markdown) == [
        "sbmoe evaluate --model m --dataset d   # a comment",
        "sbmoe train --base b",
    ]


def anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_readme_is_short_and_links_the_guide_whose_anchors_exist():
    readme = README.read_text(encoding="utf-8")
    assert len(readme) < README_LIMIT, f"README.md has {len(readme)} characters: move detail to the guide"
    assert "](docs/GUIDE.md)" in readme
    guide = GUIDE.read_text(encoding="utf-8")
    anchors = {anchor(line.lstrip("#")) for line in guide.splitlines() if line.startswith("#")}
    linked = re.findall(r"\]\(docs/GUIDE\.md#([^)]+)\)", readme) + re.findall(r"\]\(#([^)]+)\)", guide)
    assert linked and not [name for name in linked if name not in anchors]
