# Sourced by the GPU benchmark scripts (not run on its own): from the repository root, installs
# the wheels in .whl/ if there are any (DeepSpeed, pydantic, ... for a machine without them) into
# /tmp/site, puts them and the repository on PYTHONPATH, and records the GPU in $OUT/gpu.txt.
# Needs OUT set and existing.
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
