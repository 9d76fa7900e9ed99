#!/usr/bin/env python
"""Install detectron2's Python package into the running interpreter's environment.

detectron2 is not published on PyPI under its own name. The registry package
``sal-detectron2==0.7.2`` is a build of detectron2's main branch for CPython 3.10; its Python
sources work on newer Pythons, but the wheel also carries

* a top-level ``tools`` package (detectron2's scripts) that would shadow any other ``tools``,
* a CPython-3.10 ``detectron2/_C`` binary that cannot load on another Python,
* a ``numpy<2`` requirement that the code does not need.

This script downloads that wheel, removes those three things, retags it as a pure-Python wheel and
installs it with pip, so pip manages it (``pip list`` shows ``sal-detectron2``, ``pip uninstall``
removes it cleanly) and only ``detectron2/`` lands in site-packages. Without ``_C``, detectron2
falls back to pycocotools' COCOeval and lacks deformable conv and rotated-box ops, which this
project does not use.

A detectron2 that is already importable (for example one built from source with its C++ ops) is
left alone. Use ``--force`` to replace it.
"""

import argparse
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import tempfile

DIST = "sal-detectron2"
VERSION = "0.7.2"
# the wheel is tagged for CPython 3.10; pip must be told so to download it from another Python
WHEEL_PYTHON = "3.10"


def _run(*args: str) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, check=True)


def _pip(*args: str) -> None:
    _run(sys.executable, "-m", "pip", *args)


def _rewrite_lines(path: pathlib.Path, edit) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(line for line in map(edit, lines) if line is not None) + "\n")


def _make_pure_python_wheel(wheel: pathlib.Path, workdir: pathlib.Path) -> pathlib.Path:
    """Unpack ``wheel``, drop tools/ and compiled files, fix metadata, and repack it."""
    unpacked = workdir / "unpacked"
    _run(sys.executable, "-m", "wheel", "unpack", str(wheel), "--dest", str(unpacked))
    (root,) = unpacked.iterdir()
    (dist_info,) = root.glob("*.dist-info")

    shutil.rmtree(root / "tools", ignore_errors=True)
    for binary in (root / "detectron2").rglob("*.so"):
        binary.unlink()

    # only detectron2/ is a top-level package now
    (dist_info / "top_level.txt").write_text("detectron2\n")
    # a pure-Python wheel for any Python 3
    _rewrite_lines(
        dist_info / "WHEEL",
        lambda line: (
            "Root-Is-Purelib: true"
            if line.startswith("Root-Is-Purelib:")
            else "Tag: py3-none-any"
            if line.startswith("Tag:")
            else line
        ),
    )
    # drop the unneeded upper bound on numpy
    _rewrite_lines(
        dist_info / "METADATA",
        lambda line: "Requires-Dist: numpy" if line.startswith("Requires-Dist: numpy") else line,
    )

    out = workdir / "repacked"
    out.mkdir()
    # `wheel pack` names the file from the WHEEL tags and regenerates RECORD
    _run(sys.executable, "-m", "wheel", "pack", str(root), "--dest-dir", str(out))
    (repacked,) = out.glob("*.whl")
    return repacked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="replace an installed detectron2")
    args = parser.parse_args()

    spec = importlib.util.find_spec("detectron2")
    if spec is not None and not args.force:
        print(
            f"detectron2 already installed at {pathlib.Path(spec.origin).parent}: leaving it alone"
        )
        return 0

    with tempfile.TemporaryDirectory(prefix="detectron2-wheel-") as tmp:
        workdir = pathlib.Path(tmp)
        download = workdir / "download"
        _pip(
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            WHEEL_PYTHON,
            "--dest",
            str(download),
            f"{DIST}=={VERSION}",
        )
        (wheel,) = download.glob("*.whl")
        repacked = _make_pure_python_wheel(wheel, workdir)
        # dependencies are pinned in requirements.txt and installed before this script runs
        _pip("install", "--no-deps", "--force-reinstall", str(repacked))
    return 0


if __name__ == "__main__":
    sys.exit(main())
