"""The code blocks and links of README.md and of every page in docs/.

A block's fence language says how it is checked:

- ``python``: runs as written. All Python blocks run in one subprocess (one import of torch and
  detectron2), each in a fresh namespace from the repository root; identical blocks run once.
- ``bash`` (or ``sh``, ``shell``): commands that are checked, not run (trainings of hours, files a
  user has). Each is ``make TARGET`` with a target of the Makefile, or ``.venv/bin/python``
  running a script of the repository whose own argument parser accepts the arguments, whose
  config file, ``.py`` and ``.yaml`` arguments exist, and whose config with its overrides (yacs
  ``KEY VALUE`` or LazyConfig ``key=value``) passes the training tools' config checks; or
  ``-m`` with a module that imports. The tools themselves run end to end in their own tests.
- ``yaml``: a detectron2 config (``_BASE_`` relative to the repository root) that passes the
  training tools' config checks.
- any other language (``text``) or none: output, not checked.

Every relative link or image in these pages points at a file or folder that exists (and an
anchor at a heading of the page it names), and every repository path written in backticks
outside code blocks exists.
"""

import argparse
import importlib.util
import json
import re
import runpy
import shlex
import subprocess
import sys
from functools import lru_cache
from typing import Dict, Iterator, List, NamedTuple
from unittest import mock

import pytest

from sn_detection.engine.config_checks import lazy_training_config, yaml_training_config
from sn_detection.testing import REPO, load_script

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHELL_LANGUAGES = ("bash", "sh", "shell")
# backticked words that name a path of the repository
REPO_PATH = re.compile(
    r"`((?:sn_detection|tools|configs|benchmarks|tests|docs|scripts|datasets)/[^`\s]*)`"
)


class Block(NamedTuple):
    page: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def _blocks() -> List[Block]:
    blocks = []
    for page in PAGES:
        text = page.read_text()
        for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
            line = text.count("\n", 0, m.start()) + 1
            blocks.append(Block(str(page.relative_to(REPO)), line, m.group(1), m.group(2)))
    return blocks


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b.language == "python"]
SHELL = [b for b in BLOCKS if b.language in SHELL_LANGUAGES]
YAML = [b for b in BLOCKS if b.language == "yaml"]


def _prose(text: str) -> str:
    """``text`` without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def test_readme_has_code_blocks():
    readme = [b for b in BLOCKS if b.page == "README.md"]
    assert {b.language for b in readme} >= {"python", "bash", "yaml"}


# ---- Python blocks: run -------------------------------------------------------------------------

RUNNER = """
import json, sys, traceback
codes = json.load(open(sys.argv[1]))
results = []
for code in codes:
    try:
        exec(compile(code, "<docs block>", "exec"), {"__name__": "__main__"})
        results.append(None)
    except BaseException:
        results.append(traceback.format_exc())
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def python_results(tmp_path_factory) -> Dict[str, str]:
    """Each distinct Python block -> None if it ran, else its traceback."""
    codes = sorted({b.code for b in PYTHON})
    tmp = tmp_path_factory.mktemp("blocks")
    (tmp / "codes.json").write_text(json.dumps(codes))
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(tmp / "codes.json"), str(tmp / "results.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(zip(codes, json.loads((tmp / "results.json").read_text())))


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_block_runs_as_written(block, python_results):
    assert python_results[block.code] is None, block.code + "\n" + python_results[block.code]


# ---- shell blocks: checked ----------------------------------------------------------------------


def _commands(block: str) -> Iterator[List[str]]:
    """Commands of a shell block: comments dropped, backslash continuations joined, leading
    ``VAR=value`` environment settings removed."""
    text = re.sub(r"\\\n\s*", " ", block)
    for line in text.splitlines():
        argv = shlex.split(line, comments=True)
        while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
            argv.pop(0)
        if argv:
            yield argv


@lru_cache(maxsize=None)
def _makefile_targets() -> frozenset:
    return frozenset(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


@lru_cache(maxsize=None)
def _load(script: str):
    """A script as a module, loaded once per session."""
    return load_script(script)


class _Parsed(BaseException):
    """Raised with the namespace once a script's parser has accepted its arguments (a
    BaseException, so that no tool's error handling catches it)."""

    def __init__(self, namespace: argparse.Namespace):
        super().__init__()
        self.namespace = namespace


def _parse_with_script(script: str, args: List[str]) -> argparse.Namespace:
    """``args`` parsed by ``script``'s own parser: its ``parse_args(argv)`` where it has one (the
    tool's whole command line, checks included), else the first ``ArgumentParser`` the script
    runs as ``__main__``, stopped right after parsing. A refusal fails the test with its message."""
    module = _load(script)
    try:
        if callable(getattr(module, "parse_args", None)):
            return module.parse_args(args)
        parse_known_args = argparse.ArgumentParser.parse_known_args

        def stop_after_parsing(parser, argv=None, namespace=None):
            namespace, extras = parse_known_args(parser, argv, namespace)
            if extras:
                parser.error("unrecognized arguments: " + " ".join(extras))
            raise _Parsed(namespace)

        with mock.patch.object(argparse.ArgumentParser, "parse_known_args", stop_after_parsing):
            with mock.patch.object(sys, "argv", [script, *args]):
                runpy.run_path(str(REPO / script), run_name="__main__")
    except _Parsed as parsed:
        return parsed.namespace
    except SystemExit as e:
        pytest.fail(f"{script} refuses {args}: exit status {e.code}")
    pytest.fail(f"{script} ran without parsing its arguments with argparse")


def _check_overrides(namespace: argparse.Namespace) -> None:
    """The config of a parsed command with its overrides passes the training tools' checks (keys
    the config has, values, norms)."""
    config, opts = getattr(namespace, "config_file", ""), getattr(namespace, "opts", None) or []
    if config.endswith(".py"):
        lazy_training_config(str(REPO / config), opts)
    elif config:
        yaml_training_config(str(REPO / config), opts)


def _check_python_command(argv: List[str]) -> None:
    words = argv[1:]
    while words and words[0].startswith("-") and words[0] != "-m":
        words = words[2:] if words[0] in ("-W", "-X") else words[1:]  # interpreter options
    assert words, argv
    for word in words[1:]:
        if word.endswith((".yaml", ".py")):
            assert (REPO / word).is_file(), (word, argv)
    if words[0] == "-m":
        assert importlib.util.find_spec(words[1]) is not None, argv
        return
    script = words[0]
    assert (REPO / script).is_file(), script
    namespace = _parse_with_script(script, words[1:])
    if getattr(namespace, "config_file", ""):
        assert (REPO / namespace.config_file).is_file(), (namespace.config_file, argv)
    _check_overrides(namespace)


@pytest.mark.parametrize("block", SHELL, ids=[b.id for b in SHELL])
def test_shell_block_names_what_exists_and_parses(block):
    commands = list(_commands(block.code))
    assert commands, block.code
    for argv in commands:
        if argv[0] == "make":
            assert set(argv[1:]) <= _makefile_targets(), argv
        else:
            assert argv[0] == ".venv/bin/python", (block.id, argv)
            _check_python_command(argv)


# ---- YAML blocks: configs -----------------------------------------------------------------------


@pytest.mark.parametrize("block", YAML, ids=[b.id for b in YAML])
def test_yaml_block_is_a_config_that_passes_the_checks(block, tmp_path):
    text = re.sub(
        r'^_BASE_: "?([^"\n]+)"?',
        lambda m: f'_BASE_: "{REPO / m.group(1)}"',
        block.code,
        flags=re.M,
    )
    (tmp_path / "config.yaml").write_text(text)
    yaml_training_config(str(tmp_path / "config.yaml"), [])


# ---- links --------------------------------------------------------------------------------------


def _anchors(page) -> set:
    """GitHub's anchors of the headings of a markdown page."""
    headings = re.findall(r"^#+\s+(.*)$", _prose(page.read_text()), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_point_at_what_exists(page):
    broken = []
    for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    assert not broken, broken


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_repository_paths_in_text_exist(page):
    paths = REPO_PATH.findall(_prose(page.read_text()))
    missing = [p for p in paths if not re.search(r"[{}<>*]|\.\.\.", p) and not (REPO / p).exists()]
    assert not missing, missing
