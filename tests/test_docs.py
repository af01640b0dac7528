"""The getting-started pages run as written.

Each page under ``docs/getting-started/`` is replayed in a fresh folder, its fenced blocks in
order:

- a block whose first line is ``# file: NAME`` (any language) is written to ``NAME``;
- a ```` ```python ```` block is saved as a script and run with this interpreter;
- in a ```` ```console ```` block every line starting with ``$ `` is a shell command, run
  with this environment's ``fedwarden`` first on ``PATH``.

```bash``` blocks are shown, never run: they set up machines (``make demo``) or need a
deployment. The site itself is built by ``make docs`` (``mkdocs build --strict``), which
``make test`` runs and which checks the pages' links and navigation; the README's links into
the pages are checked here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import fedwarden

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GETTING_STARTED = sorted((DOCS / "getting-started").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)
FILE_MARK = re.compile(r"^# file: (\S+)\n")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page: its language and text."""

    language: str
    text: str


def blocks(page: Path) -> list[Block]:
    """The page's fenced blocks, in order."""
    return [Block(m.group(1), m.group(2)) for m in FENCE.finditer(page.read_text())]


def runnable(page: Path) -> bool:
    """Whether the page has anything the replay writes or runs."""
    return any(FILE_MARK.match(b.text) or b.language in ("python", "console") for b in blocks(page))


def environment() -> dict[str, str]:
    """This interpreter's ``bin`` first on PATH, and this checkout's sources importable."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    source = str(Path(fedwarden.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


def check(command: list[str] | str, folder: Path, what: str) -> None:
    """Run one block's command in ``folder``; fail with its output if it fails."""
    done = subprocess.run(
        command,
        cwd=folder,
        env=environment(),
        shell=isinstance(command, str),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in GETTING_STARTED if runnable(p)], ids=lambda p: p.stem)
def test_getting_started_page_runs(page: Path, tmp_path: Path) -> None:
    for number, block in enumerate(blocks(page)):
        where = f"{page.name} block {number + 1}"
        named = FILE_MARK.match(block.text)
        if named:
            (tmp_path / named.group(1)).write_text(block.text)
        elif block.language == "python":
            script = tmp_path / f"block_{number}.py"
            script.write_text(block.text)
            check([sys.executable, script.name], tmp_path, where)
        elif block.language == "console":
            for line in block.text.splitlines():
                if line.startswith("$ "):
                    check(line[2:], tmp_path, f"{where}: {line}")


def test_every_getting_started_block_is_run_written_or_shown() -> None:
    """The replay's rules are what the pages use: every block is run, written or shown."""
    assert GETTING_STARTED, "no getting-started pages"
    for page in GETTING_STARTED:
        for block in blocks(page):
            assert block.language in ("python", "console", "bash", "toml", "text"), (
                f"{page.name}: a ```{block.language} block is neither run nor shown on purpose"
            )
            if block.language == "console":
                assert any(line.startswith("$ ") for line in block.text.splitlines()), (
                    f"{page.name}: a console block with no '$ ' command"
                )


def test_readme_and_docs_links_point_at_pages() -> None:
    """Every relative link in the README and the pages names a file that exists."""
    sources = [ROOT / "README.md", *DOCS.rglob("*.md")]
    for source in sources:
        for target in LINK.findall(source.read_text()):
            if re.match(r"^[a-z]+:", target):
                continue
            assert (source.parent / target).exists(), f"{source.relative_to(ROOT)}: {target}"
