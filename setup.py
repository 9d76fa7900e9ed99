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
    # runtime dependencies are pinned in requirements.txt and installed by `make setup`
    install_requires=[],
    **_extensions(),
)
