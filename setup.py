import glob
import sys

from setuptools import find_packages, setup


def _extensions() -> dict:
    """The C++ CPU kernels of SN (``sn_detection._C``), built when torch is importable.

    A failing build fails the install: the kernels are wanted. Without torch at build time (an
    isolated build) the package is installed without them and runs on the plain PyTorch path.
    """
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        print(
            "sn_detection: torch not importable, building without the C++ kernels", file=sys.stderr
        )
        return {}
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    extension = CppExtension(
        "sn_detection._C",
        sources=sorted(glob.glob("sn_detection/csrc/*.cpp")),
        # no -march=native: the build must run on any x86-64
        extra_compile_args=["-O3", *openmp],
        extra_link_args=openmp,
    )
    return {
        "ext_modules": [extension],
        "cmdclass": {"build_ext": BuildExtension.with_options(use_ninja=False)},
    }


setup(
    name="sn_detection",
    version="0.1.0",
    description="Switchable Normalization (SN) and synchronized SN for detectron2",
    packages=find_packages(include=["sn_detection", "sn_detection.*"]),
    python_requires=">=3.10",
    # What the package imports, as ranges; `make setup` installs the pinned, tested versions of
    # requirements.txt. detectron2 itself is not on PyPI under its name: install it first (from
    # source, or as scripts/install_detectron2.py does); sn_detection/__init__.py says so if it
    # is missing.
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy>=1.24",
        "fvcore>=0.1.5",
        "iopath>=0.1.9",
        "pycocotools>=2.0.6",
        "opencv-python-headless>=4.5",
        "matplotlib>=3.5",
        "filelock>=3.0",
        "tabulate>=0.8",
        "omegaconf>=2.1",
        "pillow>=9.0",
        "pyyaml>=5.1",
    ],
    extras_require={
        # tools/deploy/export_model.py --format onnx, and its check in onnxruntime
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        # the statistics of benchmarks/ab_compare.py
        "bench": ["scipy>=1.9"],
    },
    **_extensions(),
)
