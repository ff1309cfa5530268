#!/usr/bin/env bash
# A Python venv with llama.cpp (through llama-cpp-python) and jinja2, for the
# tools that compare aios' local inference with llama.cpp: the tokenizer
# fixtures (scripts/reference/tokenizer_ids.py) and the benchmarks.
#
# llama-cpp-python is built from PyPI's source package: pip compiles the
# llama.cpp it vendors with CMake (cmake and ninja come from PyPI as build
# dependencies; a C/C++ compiler must be on the machine). The build is CPU-only
# and tuned for this machine (-march=native); it takes several minutes on two
# cores. A venv that already holds the pinned versions is left alone, so a
# second run costs nothing.
#
# Usage: scripts/llama-cpp-venv.sh [VENV]   (default: target/llama-cpp-venv).
#        Prints the venv's directory; use "$VENV/bin/python".
#        CMAKE_BUILD_PARALLEL_LEVEL (default: the number of cores) bounds the build.
#
# CPU extra buffer types (the repacked weight layouts of the CPU backend,
# "CPU_REPACK", and AMX where the CPU has it): llama.cpp moves weights into them
# when it can, and that path crashed in one of our VMs. Two knobs turn it off:
#
# - at run time, llama_model_params.use_extra_bufts = False (llama.cpp's own
#   tools: --no-repack / -nr). llama-cpp-python 0.3.36's Llama() has no argument
#   for it; a benchmark patches the defaults before constructing Llama:
#
#     import llama_cpp, llama_cpp.llama_cpp as low
#     default = low.llama_model_default_params
#     def no_extra_bufts():
#         params = default()
#         params.use_extra_bufts = False
#         return params
#     low.llama_model_default_params = no_extra_bufts
#
#   (Checked with 0.3.36: with the patch, the verbose load log no longer offers
#   the "preferred buffer type CPU_REPACK".)
#
# - at build time, EXTRA_CMAKE_ARGS="-DGGML_CPU_REPACK=OFF" drops the repacking;
#   AMX kernels are compiled only when -march=native reports AMX (GGML_NATIVE=ON)
#   or -DGGML_AMX_INT8=ON asks for them, so -DGGML_NATIVE=OFF with the AVX
#   options set by hand keeps them out on a CPU that has AMX.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-$root/target/llama-cpp-venv}

# Pins: the fixtures under inference/tests/fixtures/tokenizer were made with these.
llama_cpp_python=0.3.36
jinja2=3.1.6

python="$venv/bin/python"
if [ -x "$python" ] && "$python" - "$llama_cpp_python" "$jinja2" <<'EOF' 2>/dev/null; then
import sys, importlib.metadata as m
want = dict(zip(["llama_cpp_python", "jinja2"], sys.argv[1:]))
sys.exit(any(m.version(name) != version for name, version in want.items()))
EOF
  echo "$venv"
  exit 0
fi

command -v python3 >/dev/null || die "python3 not found"
command -v c++ >/dev/null || command -v g++ >/dev/null || command -v clang++ >/dev/null \
  || die "no C++ compiler: install g++ (Debian: apt-get install build-essential)"

say "creating $venv"
python3 -m venv "$venv" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
"$python" -m pip install --quiet --disable-pip-version-check --upgrade pip

# CPU only: GPU backends are off on Linux by default, but say so, so that a
# machine with a CUDA toolkit or Vulkan SDK installed does not try them.
# LLAMA_CURL=OFF: model downloads are not needed and libcurl headers may be missing.
cmake_args=(
  -DGGML_NATIVE=ON
  -DGGML_CUDA=OFF -DGGML_HIP=OFF -DGGML_MUSA=OFF -DGGML_SYCL=OFF
  -DGGML_VULKAN=OFF -DGGML_METAL=OFF -DGGML_OPENCL=OFF -DGGML_BLAS=OFF
  -DGGML_RPC=OFF -DLLAMA_CURL=OFF
)
export CMAKE_ARGS="${cmake_args[*]} ${EXTRA_CMAKE_ARGS:-}"
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}
say "building llama-cpp-python==$llama_cpp_python from source (CMAKE_ARGS=$CMAKE_ARGS); this takes minutes"
"$python" -m pip install --disable-pip-version-check --no-cache-dir \
  --no-binary llama-cpp-python \
  "llama-cpp-python==$llama_cpp_python" "jinja2==$jinja2" \
  || die "pip could not build llama-cpp-python (see the CMake output above)"
"$python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)" >&2 \
  || die "llama_cpp does not import after the build"
echo "$venv"
