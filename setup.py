from setuptools import find_packages, setup

setup(
    name="graphc",
    version="0.1.0",
    description="A symbolic autodiff compiler with Theano's API: rewrites, fusion, LLVM and CUDA",
    packages=find_packages(include=["graphc", "graphc.*"]),
    python_requires=">=3.10",
    install_requires=["numpy>=2", "llvmlite>=0.50", "networkx", "scipy"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "gpu": ["cupy-cuda13x", "nvidia-cuda-nvrtc"],
        "bench": ["matplotlib"],
    },
)
