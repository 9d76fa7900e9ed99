"""Print the versions sn_detection runs with: ``python -m sn_detection.collect_env``."""

import importlib
import importlib.metadata
import platform
import sys

from tabulate import tabulate


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _detectron2_ops() -> str:
    try:
        importlib.import_module("detectron2._C")
    except ImportError as e:
        return f"absent ({type(e).__name__}); COCO eval uses pycocotools' COCOeval"
    return "present"


def collect_env_info() -> str:
    import detectron2
    import torch

    from sn_detection.layers import kernels

    rows = [
        ("Python", sys.version.split()[0]),
        ("platform", platform.platform()),
        ("sn_detection", _version("sn_detection")),
        ("detectron2", f"{detectron2.__version__} @ {detectron2.__path__[0]}"),
        ("detectron2 distribution", _version("sal-detectron2")),
        ("detectron2 C++ ops (_C)", _detectron2_ops()),
        ("torch", f"{torch.__version__} @ {torch.__path__[0]}"),
        ("torchvision", _version("torchvision")),
        ("CUDA available", f"{torch.cuda.is_available()} (build {torch.version.cuda})"),
        ("CPU threads", str(torch.get_num_threads())),
        ("SN CPU kernels", kernels.kernels_status("cpu")),
        ("SN CUDA kernels", kernels.kernels_status("cuda") if torch.cuda.is_available() else "-"),
        ("SN fast kernels", f"{kernels.FAST_KERNELS_ENV}={int(kernels.fast_kernels_enabled())}"),
        ("SN mixer compile", f"{kernels.COMPILE_ENV}={kernels.compile_mixer_mode()}"),
        ("triton", _version("triton")),
        ("fvcore", _version("fvcore")),
        ("iopath", _version("iopath")),
        ("pycocotools", _version("pycocotools")),
        ("numpy", _version("numpy")),
    ]
    return tabulate(rows)


if __name__ == "__main__":
    print(collect_env_info())
