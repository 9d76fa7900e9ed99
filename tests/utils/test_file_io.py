"""Files a user keeps are written whole or not at all, and a bad destination is found first."""

import os
import subprocess
import sys

import pytest

from sn_detection.testing import load_script
from sn_detection.utils.cli import run_tool
from sn_detection.utils.file_io import atomic_save, atomic_write, check_writable


def test_atomic_write_replaces_the_file_only_once_written(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with atomic_write(path, "w") as f:
        f.write("new")
        assert path.read_text() == "old"  # not replaced while writing
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["report.json"]


def test_a_failure_part_way_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(b"good weights")
    with pytest.raises(OSError, match="disk full"):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise OSError("disk full")
    assert path.read_bytes() == b"good weights" and os.listdir(tmp_path) == ["weights.pkl"]


def test_atomic_save_writes_what_the_writer_writes_or_leaves_the_old_file(tmp_path):
    path = tmp_path / "model.ts"
    path.write_bytes(b"good model")

    def failing(f):
        f.write(b"half a model")
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")

    with pytest.raises(RuntimeError, match="unexpected pos"):
        atomic_save(path, failing)
    assert path.read_bytes() == b"good model" and os.listdir(tmp_path) == ["model.ts"]
    atomic_save(path, lambda f: f.write(b"new model"))
    assert path.read_bytes() == b"new model" and os.listdir(tmp_path) == ["model.ts"]


def test_new_files_get_the_usual_permissions_and_replacements_keep_theirs(tmp_path):
    fresh = tmp_path / "fresh.txt"
    with atomic_write(fresh, "w") as f:
        f.write("x")
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask
    os.chmod(fresh, 0o640)
    with atomic_write(fresh, "w") as f:
        f.write("y")
    assert fresh.stat().st_mode & 0o777 == 0o640


def test_a_missing_directory_is_reported_before_any_work(tmp_path):
    ran = []
    with pytest.raises(FileNotFoundError, match="does not exist"):
        with atomic_write(tmp_path / "no_such_dir" / "out.pkl"):
            ran.append(True)
    assert not ran
    with pytest.raises(IsADirectoryError, match="give a file name"):
        check_writable(tmp_path)


def test_converter_checks_the_destination_before_reading_the_input(tmp_path, capsys):
    missing_input = tmp_path / "not_read.pth"  # never opened: the destination fails first
    out = tmp_path / "no_such_dir" / "out.pkl"
    converter = load_script("tools/convert_sn_imagenet_to_d2.py")
    assert run_tool(converter.main, [str(missing_input), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_dir does not exist" in err


def test_config_value_checks_survive_python_dash_o():
    code = (
        "from detectron2.config import get_cfg\n"
        "from sn_detection import add_sn_config\n"
        "from sn_detection.config import sn_options\n"
        "for key, value in (('EPS', 0.0), ('MOMENTUM', 1.5)):\n"
        "    cfg = get_cfg(); add_sn_config(cfg); setattr(cfg.MODEL.SN, key, value)\n"
        "    try:\n"
        "        sn_options(cfg)\n"
        "    except ValueError as e:\n"
        "        assert 'MODEL.SN.' + key in str(e), e\n"
        "    else:\n"
        "        raise SystemExit(key + ' accepted')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
