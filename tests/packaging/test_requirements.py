"""The installed package declares what it imports."""

import ast
import importlib.metadata
import pathlib
import re
import sys

import sn_detection

# import name -> distribution name, where they differ
DISTRIBUTION = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}
# imported by the package but not declared: detectron2 (not on PyPI under its name; checked at
# import), triton (shipped with torch's CUDA builds, imported only where present), and onnx /
# onnxruntime (the "onnx" extra)
UNDECLARED = {"detectron2", "triton", "onnx", "onnxruntime"}


def _third_party_imports() -> set:
    root = pathlib.Path(sn_detection.__file__).parent
    names = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "sn_detection"}


def _declared() -> set:
    requires = importlib.metadata.requires("sn_detection") or []
    return {re.split(r"[<>=!~ ;\[]", r, maxsplit=1)[0].lower() for r in requires}


def test_every_third_party_import_is_declared():
    declared = _declared()
    missing = {
        name
        for name in _third_party_imports() - UNDECLARED
        if DISTRIBUTION.get(name, name).lower() not in declared
    }
    assert not missing, f"imported by sn_detection but not in setup.py install_requires: {missing}"


def test_the_onnx_extra_declares_the_exporter():
    requires = importlib.metadata.requires("sn_detection") or []
    onnx = [r for r in requires if 'extra == "onnx"' in r]
    assert any(r.startswith("onnx") for r in onnx) and any("onnxruntime" in r for r in onnx)
