#!/usr/bin/env bash
# Download the wheels an air-gapped GPU node needs to run ktae (and benchmarks/gpu_check.py), then print
# the install line to run on that node.
#
#   benchmarks/wheelhouse.sh [-p PYTHON_VERSION] [-t PLATFORM] [-c CUDA_INDEX] [-e EXTRAS] [-d DIR]
#
#   -p  Python version of the node, e.g. 3.11 (default: this machine's)
#   -t  pip platform tags the node accepts, comma-separated, newest first (pip takes them literally, so
#       list the older manylinux tags too; default: manylinux_2_28_x86_64,manylinux_2_17_x86_64,
#       manylinux2014_x86_64; aarch64 nodes: the same with aarch64)
#   -c  PyTorch wheel index for the node's CUDA (default: https://download.pytorch.org/whl/cu128)
#   -e  ktae extras (default: trl,eval,gguf)
#   -d  output folder (default: wheelhouse-py<version>-<platform>)
#
# Only binary wheels are downloaded (--only-binary=:all:), so nothing is built for the wrong machine; the
# few pure-Python dependencies published as source only (PURE_PYTHON_SDISTS) are built into wheels here,
# which run anywhere. Copy DIR to the node and run the printed `pip install --no-index` line.
set -euo pipefail
cd "$(dirname "$0")/.."

python_version=$(python -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
platform=manylinux_2_28_x86_64,manylinux_2_17_x86_64,manylinux2014_x86_64
cuda_index=https://download.pytorch.org/whl/cu128
extras=trl,eval,gguf
dir=""
while getopts "p:t:c:e:d:h" option; do
    case $option in
        p) python_version=$OPTARG ;;
        t) platform=$OPTARG ;;
        c) cuda_index=$OPTARG ;;
        e) extras=$OPTARG ;;
        d) dir=$OPTARG ;;
        *) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 2 ;;
    esac
done
dir=${dir:-wheelhouse-py${python_version}-${platform%%,*}}
torch_pin=$(python - <<'EOF'
import tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print(next(d for d in deps if d.startswith("torch")))
EOF
)

# Source-only on PyPI: the antlr4 runtime that math-verify's parser and hydra (verl) pin.
PURE_PYTHON_SDISTS=("antlr4-python3-runtime==4.9.3")

mkdir -p "$dir"
# The ktae wheel itself and the source-only pure-Python dependencies, built here.
python -m pip wheel --quiet --no-deps --wheel-dir "$dir" . "${PURE_PYTHON_SDISTS[@]}"
ktae_wheel=$(ls -t "$dir"/ktae-*.whl | head -1)
common=(--only-binary=:all: --python-version "$python_version" --dest "$dir" --find-links "$dir")
IFS=, read -ra platforms <<< "$platform"
for tag in "${platforms[@]}"; do common+=(--platform "$tag"); done
# torch from the CUDA index first, so that the resolver below finds it there and keeps it.
python -m pip download --quiet "${common[@]}" --index-url "$cuda_index" "$torch_pin"
python -m pip download --quiet "${common[@]}" --extra-index-url "$cuda_index" "${ktae_wheel}[${extras}]"

echo "wheels for Python $python_version on ${platforms[0]}: $dir ($(ls "$dir" | wc -l) files)"
echo "on the node, with $dir copied beside you:"
echo "  python -m pip install --no-index --find-links $dir 'ktae[${extras}]'"
