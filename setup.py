from setuptools import find_packages, setup

setup(
    name="sn_detection",
    version="0.1.0",
    description="Switchable Normalization (SN) and synchronized SN for detectron2",
    packages=find_packages(include=["sn_detection", "sn_detection.*"]),
    python_requires=">=3.10",
    # runtime dependencies are pinned in requirements.txt and installed by `make setup`
    install_requires=[],
)
