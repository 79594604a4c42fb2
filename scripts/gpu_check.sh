#!/usr/bin/env bash
# The GPU machine's one prepared check: the GPU benchmark (ubm_build.bench.gpu) on the packed
# model, in under 5 minutes and without network.
#
# Needs, beside the working tree: .gpu/model (python -m ubm_build.bench.gpu pack) and .whl/
# (cp312 wheels of what the machine lacks: orjson, tritonclient, python-rapidjson).
# Writes ${OUT:-results}/bench-gpu.json, and a copy in results/; a dry run writes only
# ${OUT:-.run/gpu-check-dry-run}/bench-gpu.json.
#
#   bash scripts/gpu_check.sh                          # on the GPU
#   GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash scripts/gpu_check.sh
#                                                      # dry run here, with the project's venv
#
# GPU_CHECK_RECORDS (default 2048) sets the records each row scores on the GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

device="${GPU_CHECK_DEVICE:-cuda}"
if [ "$device" = cpu ]; then  # a dry run never replaces the GPU's results
    out_dir="${OUT:-.run/gpu-check-dry-run}"
else
    out_dir="${OUT:-results}"
fi
python="${PYTHON:-python3}"
export PYTHONPATH="build:sdk${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false

if [ "$device" != cpu ] && [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    site=/tmp/site
    if ! "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" .whl/*.whl 2>/tmp/pip-install.log; then
        echo "pip install failed ($(tail -n 1 /tmp/pip-install.log)); unpacking the wheels"
        "$python" - "$site" .whl/*.whl <<'EOF'
import shutil, sys, zipfile
from pathlib import Path
site = Path(sys.argv[1])
for wheel in sys.argv[2:]:
    zipfile.ZipFile(wheel).extractall(site)
for data in site.glob("*.data"):
    for lib in ("purelib", "platlib"):
        for item in (data / lib).glob("*") if (data / lib).is_dir() else []:
            shutil.move(str(item), site / item.name)
EOF
    fi
    export PYTHONPATH="$site:$PYTHONPATH"
fi

echo "== nvidia-smi"
nvidia-smi || echo "(no nvidia-smi)"
echo "== versions"
"$python" - <<'EOF'
import sys, numpy, tokenizers, torch, transformers
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| transformers", transformers.__version__, "| tokenizers", tokenizers.__version__,
      "| numpy", numpy.__version__)
print("cuda available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
try:
    import onnxruntime
    print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
except ImportError as e:
    print("onnxruntime:", e)
EOF

# The SDK's __init__ imports its gRPC clients; the benchmark needs only ubm.contract and
# ubm.records. Where the clients do not import (protobuf too new, say), skip __init__.
if ! "$python" -c "import ubm" 2>/tmp/ubm-import.log; then
    echo "import ubm failed ($(tail -n 1 /tmp/ubm-import.log)); using sdk/ubm without its clients"
    mkdir -p /tmp/ubm-stub/ubm
    echo "__path__ = ['$PWD/sdk/ubm']" >/tmp/ubm-stub/ubm/__init__.py
    export PYTHONPATH="/tmp/ubm-stub:$PYTHONPATH"
fi

if [ "$device" = cpu ]; then
    sizes=(--records 64 --rounds 1 --parity-records 128)
else
    sizes=(--records "${GPU_CHECK_RECORDS:-2048}")
fi
mkdir -p "$out_dir" results
echo "== python -m ubm_build.bench.gpu run --device $device ${sizes[*]}"
timeout 270 "$python" -m ubm_build.bench.gpu run --model-dir .gpu/model --device "$device" \
    "${sizes[@]}" --out "$out_dir/bench-gpu.json"
if [ "$device" != cpu ] && [ "$(realpath "$out_dir")" != "$(realpath results)" ]; then
    cp "$out_dir/bench-gpu.json" results/bench-gpu.json
fi
echo "== done: $out_dir/bench-gpu.json"
