import pytest

from sn_detection.checkpoint import CheckpointError
from sn_detection.utils.cli import DEBUG_ENV, InputError, run_tool


def _raising(error):
    def main(args):
        raise error

    return main


def test_input_error_is_one_line_and_exit_2(capsys):
    status = run_tool(_raising(InputError("bad --flag\n  use --other")), [])
    assert status == 2
    assert capsys.readouterr().err == "error: bad --flag use --other\n"


def test_checkpoint_error_is_an_input_error(capsys):
    assert run_tool(_raising(CheckpointError("x.pth: not a checkpoint")), []) == 2
    assert "x.pth: not a checkpoint" in capsys.readouterr().err


def test_os_error_is_one_line_and_exit_1(capsys):
    assert run_tool(_raising(OSError(28, "No space left on device")), []) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_bug_keeps_its_traceback():
    with pytest.raises(ZeroDivisionError):
        run_tool(_raising(ZeroDivisionError()), [])


def test_debug_flag_shows_the_traceback_and_is_not_passed_on(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(InputError):
        run_tool(_raising(InputError("bad")), ["--debug"])
    seen = []
    assert run_tool(lambda args: seen.append(args), ["a", "--debug", "b"]) == 0
    assert seen == [["a", "b"]]


def test_debug_environment_variable_shows_the_traceback(monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(InputError):
        run_tool(_raising(InputError("bad")), [])


def test_main_return_value_is_the_exit_status():
    assert run_tool(lambda args: 3, []) == 3
