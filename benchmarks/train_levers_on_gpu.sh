#!/usr/bin/env bash
# Train generalisation levers' models on a GPU machine that has JAX but not TensorFlow, and copy
# them to OUT for scoring where the held-out proteins are (the held-out data never reach it):
#
#   bash benchmarks/train_levers_on_gpu.sh OUT --levers builtin --budget-seconds 380 ...
#   python benchmarks/generalisation_levers.py --levers builtin --budget-seconds 380 ... \
#       --work-dir W --out J     # here, after copying OUT/<lever>/* to W/models/<key>/ (key.txt)
#
# The options after OUT go to `generalisation_levers.py --train-only`; pass the same ones to the
# scoring run, so that it finds the model by its key instead of training one.  Wheels in .whl/
# (keras, namex, optree, finufft, gemmi, mrcfile: what such a machine lacks) are installed first;
# CRYOEM_GIT_COMMIT names the commit when the checkout arrives without .git.
set -euo pipefail
out=$1
shift
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
work=/tmp/levers
status=0
python3 benchmarks/generalisation_levers.py --train-only --work-dir "$work" "$@" \
    >"$out/train_log.txt" 2>&1 || status=$?
grep -v -e '^W0000' -e '^I0000' "$out/train_log.txt" | tail -20
for model in "$work"/models/*/; do
    lever=$(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['lever'])" \
        "$model/lever_training.json" 2>/dev/null || basename "$model")
    mkdir -p "$out/$lever"
    cp "$model"/{model.keras,config.json,history.csv,best.json} "$out/$lever/" 2>/dev/null || true
    cp "$model/lever_training.json" "$out/$lever/" 2>/dev/null || true
    basename "$model" >"$out/$lever/key.txt"
done
exit "$status"
