#!/usr/bin/env bash
# Before a lent-GPU run (at no device time): download, into .whl/ (git-ignored), the wheels of the runtime
# dependencies the GPU image lacks (Python 3.12, manylinux x86_64). gpu_check.sh installs them from
# there; pass `carry: [".whl"]` to the device tool. The image has torch, triton, numpy, pyyaml, pillow,
# tensorboard, einops, safetensors, tqdm and scipy; it lacks omegaconf (whose only need is pyyaml) and av.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
mkdir -p .whl
platforms=()
for n in 2_28 2_27 2_24 2_17; do platforms+=(--platform "manylinux_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 -d .whl "omegaconf==2.4.0" "av==18.1.0"
ls -la .whl
du -sh .whl
