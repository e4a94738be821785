"""Every tool command in the README's code blocks is accepted by that tool's own argument parser.

Commands are the code-block lines starting with ``python tools/...``, ``tools/...``, ``torchrun ... tools/...``
or ``avseg-...`` (``\\`` continuations joined, ``#`` comments dropped). Each is parsed in-process by the
``build_parser()`` of the ``avseg.cli`` module the tool calls, so a renamed or removed flag fails here.
"""
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = re.compile(r"^(?:python\s+|torchrun\s+(?:--\S+\s+)*)?(tools/(\w+)\.py|avseg-([\w-]+))(\s|$)")


def readme_commands(path=ROOT / "README.md"):
    """``(line number, tool module name, arguments)`` for every tool command in the code blocks of ``path``."""
    commands, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        pending += line.rstrip().rstrip("\\") + " "
        if line.rstrip().endswith("\\"):
            continue
        text, pending = pending.strip(), ""
        match = TOOL.match(text)
        if match:
            words = shlex.split(text, comments=True)
            position = next(i for i, word in enumerate(words) if word == match.group(1))
            commands.append((start, match.group(2) or match.group(3).replace("-", "_"), words[position + 1:]))
    return commands


COMMANDS = readme_commands()


def test_the_readme_has_tool_commands():
    assert len(COMMANDS) >= 10 and {"train", "eval", "demo", "vae_explore"} <= {name for _, name, _ in COMMANDS}


@pytest.mark.parametrize("line, name, arguments", COMMANDS, ids=[f"README:{line}" for line, _, _ in COMMANDS])
def test_readme_command_parses(line, name, arguments):
    tool = ROOT / "tools" / f"{name}.py"
    assert tool.is_file(), f"README.md:{line}: {tool.name} is not in tools/"
    assert f"from avseg.cli.{name} import" in tool.read_text(encoding="utf-8"), f"tools/{name}.py does not call avseg.cli.{name}"
    parser = importlib.import_module(f"avseg.cli.{name}").build_parser()
    try:
        parser.parse_intermixed_args(arguments)
    except SystemExit:
        pytest.fail(f"README.md:{line}: tools/{name}.py rejects {shlex.join(arguments)} (see the message above)")
