"""Builds the optional C++ op library ``vllm_ascend_rerank._C`` with CMake (CMakeLists.txt).

Package metadata lives in pyproject.toml; this file only adds the CMake step. torch must be
importable while building, hence ``pip install -e . --no-build-isolation --no-deps``.
The library is optional: without CMake, a C++ compiler or an importable torch, the build
warns (shown by ``pip install -v``) and installs the package without it, and the plugin
runs its pure-torch kernels (``VLLM_ASCEND_RERANK_ATTN_IMPL=native`` then says why).

Standalone equivalent (what the build runs, see CMakeLists.txt):
    cmake -S . -B build \
        -DCMAKE_PREFIX_PATH=$(python -c 'import torch;print(torch.utils.cmake_prefix_path)') \
        && cmake --build build -j2
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        # optional: setuptools skips copying it into the source tree when it was not built.
        super().__init__(name, sources=[], optional=True)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        build_dir = ROOT / "build"
        # CMake always writes into the package (so a standalone rebuild updates the same
        # file); setuptools gets a copy where it packs or links extensions from.
        built = ROOT / "vllm_ascend_rerank" / Path(self.get_ext_filename(ext.name)).name
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        try:
            import torch

            subprocess.run(
                [
                    "cmake",
                    "-S",
                    str(ROOT),
                    "-B",
                    str(build_dir),
                    "-DCMAKE_BUILD_TYPE=Release",
                    f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                    f"-DPython3_EXECUTABLE={sys.executable}",
                ],
                check=True,
            )
            jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(os.cpu_count() or 1)
            subprocess.run(["cmake", "--build", str(build_dir), "-j", jobs], check=True)
            if built.resolve() != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(built, target)
        except (ImportError, OSError, subprocess.CalledProcessError) as exc:
            msg = (
                f"vllm-ascend-rerank: C++ op library not built ({exc}); installing without it, "
                "the plugin will use its pure-torch kernels"
            )
            self.warn(msg)
            print(f"WARNING: {msg}", file=sys.stderr)


setup(
    ext_modules=[CMakeExtension("vllm_ascend_rerank._C")],
    cmdclass={"build_ext": CMakeBuild},
)
