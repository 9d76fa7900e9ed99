"""README.md's code blocks: every Python block runs as written; every shell command names files,
configs and make targets that exist and parses with the tool's own argument parser.

The shell commands themselves (COCO training on 8 GPUs) cannot run here; the tools they call are
run end to end by their own tests."""
import re
import shlex
import subprocess
import sys

import pytest

from sn_detection.testing import REPO, load_script

README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.S | re.M)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [code for lang, code in BLOCKS if lang in ("bash", "sh", "shell")]


def _commands(block: str):
    """Commands of a shell block: comments dropped, backslash continuations joined."""
    text = re.sub(r"\\\n\s*", " ", block)
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            yield shlex.split(line)


def test_readme_has_code_blocks():
    assert PYTHON and SHELL


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs_as_written(index):
    proc = subprocess.run(
        [sys.executable, "-c", PYTHON[index]], cwd=REPO, capture_output=True, text=True,
        timeout=300,
    )
    assert proc.returncode == 0, PYTHON[index] + "\n" + proc.stderr[-3000:]


def _makefile_targets():
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M))


@pytest.mark.parametrize("index", range(len(SHELL)))
def test_shell_block_names_what_exists(index):
    targets = _makefile_targets()
    for argv in _commands(SHELL[index]):
        if argv[0] == "make":
            assert set(argv[1:]) <= targets, argv
            continue
        assert argv[0] == ".venv/bin/python", argv
        script = argv[1]
        if script == "-m":
            continue
        assert (REPO / script).is_file(), script
        for i, word in enumerate(argv):
            if word == "--config-file" or word.endswith((".yaml", ".py")) and i > 1:
                path = argv[i + 1] if word == "--config-file" else word
                assert (REPO / path).is_file(), (path, argv)
        if script == "tools/train_net.py":
            parse = _train_net_parser()
            args = parse(argv[2:])
            assert len(args.opts) % 2 == 0, argv  # KEY VALUE pairs


def _train_net_parser():
    return load_script("tools/train_net.py").parse_args
