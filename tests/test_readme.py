"""The README and docs/ hold: short README, links that resolve, commands and snippets that run as written.

Commands are taken from the README's ``bash`` blocks and checked the cheap way: ``--help`` lines run,
every other ``video-swin``/``scripts/*.py`` line is parsed by the real argument parser, and the
configs and ``--set`` overrides it names are loaded (unknown keys fail). The README's ``python``
blocks run in a subprocess, and a comment giving a shape (``x = ...  # (1, 400)``) is checked;
a block after ``<!-- readme-test: skip (why) -->`` is left out (it downloads weights).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = [README, REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]
MAX_README_LINES = 250
SKIP_MARK = "<!-- readme-test: skip"

# The Quick start's two commands: CI (.ci/run) and people copy them as they are.
QUICK_START = [
    "python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e . && "
    ".venv/bin/accelerate launch scripts/train.py --config demo.yaml",
    'python3 -m venv .venv && .venv/bin/pip install -c constraints.txt -e ".[test]" && .venv/bin/python -m pytest',
]
SCRIPT_COMMANDS = {"train": "train", "evaluate": "evaluate", "predict": "predict", "inflate": "inflate",
                   "make_demo_data": "make-demo-data"}


def _blocks(path: Path) -> list[tuple[str, str, bool]]:
    """(language, text, skip-marked) of every fenced code block of a Markdown file."""
    blocks, lang, body, skip, marked = [], None, [], False, False
    for line in path.read_text(encoding="utf-8").splitlines():
        if lang is None:
            if line.startswith("```"):
                lang, body, skip = line[3:].strip(), [], marked
            elif line.strip():
                marked = line.strip().startswith(SKIP_MARK)
        elif line.startswith("```"):
            blocks.append((lang, "\n".join(body), skip))
            lang, marked = None, False
        else:
            body.append(line)
    assert lang is None, f"{path.name}: a code block is not closed"
    return blocks


def _without_blocks(path: Path) -> str:
    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _prose(path: Path) -> str:
    """The file without its code blocks and inline code, where links are not links."""
    return re.sub(r"`[^`\n]*`", "", _without_blocks(path))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _without_blocks(path).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            slug = _slug(m.group(1))
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _commands() -> list[str]:
    """Shell commands of the README's bash blocks: continuation lines joined, comments dropped, && split."""
    commands = []
    for lang, text, _ in _blocks(README):
        if lang != "bash":
            continue
        for line in text.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands += [part.strip() for part in line.split("&&")]
    return commands


def _cli_argv(command: str) -> list[str] | None:
    """The ``video-swin`` argv of a README command, or None for one that is not ours (pip, venv)."""
    words = shlex.split(command)
    if Path(words[0]).name == "video-swin":
        return words[1:]
    for i, word in enumerate(words):
        if m := re.fullmatch(r"scripts/(\w+)\.py", word):
            return [SCRIPT_COMMANDS[m.group(1)], *words[i + 1:]]
    return None


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_quick_start_commands_are_there_exactly():
    bash = [text.splitlines() for lang, text, _ in _blocks(README) if lang == "bash"]
    for command in QUICK_START:
        assert any(command in lines for lines in bash), f"README's Quick start lost: {command}"
    assert QUICK_START[1] in (REPO / ".ci" / "run").read_text().splitlines(), "CI no longer runs the README's test command"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading '{anchor}' in {dest.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_readme_commands_parse_and_name_real_configs(capsys):
    from video_swin.cli import build_parser
    from video_swin.config import load_config

    checked = 0
    for command in _commands():
        argv = _cli_argv(command)
        if argv is None:
            continue
        if "--help" in argv:
            with pytest.raises(SystemExit) as exit_:
                build_parser().parse_args(argv)
            assert exit_.value.code == 0, command
            assert "usage: video-swin" in capsys.readouterr().out, command
        else:
            args = build_parser().parse_args(argv)  # an unknown option or subcommand exits 2
            if getattr(args, "config", None):
                load_config(args.config, getattr(args, "set", None) or [])  # unknown keys, bad values: ConfigError
        checked += 1
    assert checked >= 10, f"only {checked} commands found in the README"


def test_help_runs_as_written(tmp_path):
    helps = [argv for argv in map(_cli_argv, _commands()) if argv is not None and "--help" in argv]
    assert helps, "the README shows no --help command"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "video_swin.cli", *helps[0]], capture_output=True, text=True,
                            cwd=tmp_path, env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout


def _with_shape_checks(code: str) -> str:
    """The snippet, then an assert for every ``name = ...  # (a, b, ...)`` line."""
    checks = [f"assert tuple({name}.shape) == {shape}, ({name!r}, tuple({name}.shape))"
              for name, shape in re.findall(r"^(\w+) = .*#\s*(\([\d, ]+\))\s*$", code, flags=re.M)]
    return "\n".join([code, *checks])


def test_readme_python_snippets_run(tmp_path):
    snippets = [text for lang, text, skip in _blocks(README) if lang == "python" and not skip]
    assert snippets, "the README shows no runnable Python"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    for i, code in enumerate(snippets):
        script = tmp_path / f"snippet_{i}.py"
        script.write_text(_with_shape_checks(code))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                                env=env, timeout=300, check=False)
        assert result.returncode == 0, f"README snippet {i} failed:\n{code}\n{result.stderr[-2000:]}"


def test_skipped_snippets_say_why():
    text = README.read_text(encoding="utf-8")
    for mark in re.findall(re.escape(SKIP_MARK) + r"[^>]*-->", text):
        assert re.search(r"\(\w[^)]*\)", mark), f"a skip mark must say why: {mark}"
