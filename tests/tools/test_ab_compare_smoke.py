"""benchmarks/ab_compare.py runs end to end at tiny size: two revisions, one seed; it resumes, and
a failed run is a one-line error."""

import contextlib
import io
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from sn_detection.testing import load_script
from sn_detection.utils.cli import run_tool

REPO = pathlib.Path(__file__).resolve().parents[2]
# two landed revisions that train (a fixed pair: HEAD moves, and other commits may not train)
REV_A, REV_B = "c89deeb", "01094f8"
SCRIPT = REPO / "benchmarks" / "ab_compare.py"
TINY = ["--images", "2", "1", "--no-build", "--jobs", "2", "--norms", "SN", "--seeds", "0"]
OPTS = [
    "SOLVER.MAX_ITER",
    "1",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MIN_SIZE_TEST",
    "64",
]


def _run(output, *args) -> subprocess.CompletedProcess:
    """The harness run in this process (its trainings are child processes as always): the exit
    status and what it printed. Its SIGTERM handler is undone afterwards."""
    stdout, stderr = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            status = run_tool(
                load_script("benchmarks/ab_compare.py").main, ["--output", str(output), *args]
            )
    finally:
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(args, status, stdout.getvalue(), stderr.getvalue())


def _remove_worktrees(output):
    for tree in (output / "worktrees").glob("*"):
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    output = tmp_path_factory.mktemp("ab")
    args = ["--rev-a", REV_A, "--rev-b", REV_B, *TINY, "--opts", *OPTS]
    yield output, args, _run(output, *args)
    _remove_worktrees(output)


def test_prints_and_writes_the_table_of_both_revisions(comparison):
    output, args, result = comparison
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"### SN: A = {args[1]}, B = {args[3]}" in result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 0 |"))
    assert len(row.strip("|").split("|")) == 7
    assert "paired t-test" in result.stdout and "Welch" in result.stdout
    assert (output / "table.md").read_text() in result.stdout


def test_each_run_imports_its_own_revision(comparison):
    logs = list((comparison[0] / "runs" / "SN").glob("*/seed0/stdout.txt"))
    assert len(logs) == 2
    for log in logs:
        tree = log.parent.parent.name
        line = next(x for x in log.read_text().splitlines() if x.startswith("sn_detection from"))
        assert line.endswith(f"worktrees/{tree}/sn_detection/__init__.py")


def test_finished_runs_are_skipped(comparison):
    output, args, _ = comparison
    again = _run(output, *args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout == comparison[2].stdout


def test_same_revision_twice_is_one_line_error(tmp_path):
    result = _run(tmp_path, "--rev-a", "HEAD", "--rev-b", "HEAD", *TINY)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("error:") and "Traceback" not in result.stderr


def test_a_failed_run_is_one_line_error_naming_its_log(tmp_path):
    # one job: the failure of A's run stops the harness before B's run starts
    args = ["--rev-a", REV_A, "--rev-b", REV_B, *TINY, "--jobs", "1"]
    args += ["--opts", "SOLVER.NO_SUCH_KEY", "1"]
    try:
        result = _run(tmp_path, *args)
    finally:
        _remove_worktrees(tmp_path)
    assert result.returncode == 2
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error:") and "failed" in last and last.endswith("stdout.txt")
    assert "Traceback" not in result.stderr


def _processes_mentioning(text: str):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_sigterm_kills_the_running_trainings(tmp_path):
    args = ["--rev-a", REV_A, "--rev-b", REV_B, *TINY, "--opts", "SOLVER.MAX_ITER", "100000"]
    command = [sys.executable, str(SCRIPT), "--output", str(tmp_path), *args]
    harness = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        logs = tmp_path / "runs" / "SN"
        deadline = time.time() + 240
        while len(list(logs.glob("*/seed0/stdout.txt"))) < 2 and time.time() < deadline:
            time.sleep(1)
        assert _processes_mentioning(str(logs)), "the trainings did not start"
        harness.send_signal(signal.SIGTERM)
        harness.wait(timeout=60)
        time.sleep(1)
        assert _processes_mentioning(str(logs)) == []
    finally:
        harness.kill()
        _remove_worktrees(tmp_path)
