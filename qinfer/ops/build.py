"""Build qinfer/_C.so from csrc/: `python -m qinfer.ops.build [--method auto|cmake|torch]`.

cmake: the top-level CMakeLists.txt (needs cmake, nvcc and torch's CMake files).
torch: torch.utils.cpp_extension (ninja + nvcc), the fallback when CMake fails.
Prints the path of the library; qinfer.ops.compiled loads it on import.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "qinfer" / "_C.so"
SOURCES = [ROOT / "csrc" / name for name in ("ops.cu", "gemv.cu", "moe/topk_softmax.cu", "moe/align.cu",
                                               "moe/experts_gemv.cu")]
CUDA_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-gencode=arch=compute_90,code=sm_90"]


def build_cmake(build_dir: Path) -> Path:
    subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                    f"-DPython3_EXECUTABLE={sys.executable}"], check=True)
    subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 4)], check=True)
    return TARGET


def build_torch(build_dir: Path) -> Path:
    from torch.utils.cpp_extension import load

    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
    build_dir.mkdir(parents=True, exist_ok=True)
    load(name="_C", sources=[str(s) for s in SOURCES], extra_cuda_cflags=CUDA_FLAGS,
         build_directory=str(build_dir), is_python_module=False, verbose=True)
    shutil.copy(build_dir / "_C.so", TARGET)
    return TARGET


def build(method: str = "auto", build_dir: Path = ROOT / "build") -> Path:
    if method in ("auto", "cmake"):
        try:
            return build_cmake(build_dir / "cmake")
        except (OSError, subprocess.CalledProcessError) as err:
            if method == "cmake":
                raise
            print(f"cmake build failed ({err}); trying torch.utils.cpp_extension", file=sys.stderr)
    return build_torch(build_dir / "torch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", choices=["auto", "cmake", "torch"], default="auto")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build")
    args = parser.parse_args()
    print(build(args.method, args.build_dir))


if __name__ == "__main__":
    main()
