# Sourced by run_train_test.sh and run_tests.sh: sets PY to a Python that has
# the requirements. $PYTHON wins; else the active python3 if it has them;
# else .venv/, created and filled from requirements.txt on first use.
check='import sys, tensorflow, tensorboard, cv2, tifffile, matplotlib, pytest, xdist, rasterio, rio_cogeo, pyogrio, shapely, exactextract, cjio, onnx, onnxruntime, tf2onnx, pyflakes; assert sys.version_info >= (3, 10)'
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif python3 -c "$check" 2>/dev/null; then
    PY=python3
else
    if ! .venv/bin/python -c "$check" 2>/dev/null; then
        echo "setting up .venv/ from requirements.txt (first run only)"
        python3 -m venv .venv && .venv/bin/python -m pip install -q --upgrade pip \
            && .venv/bin/python -m pip install -q -r requirements.txt \
            || { echo "could not install requirements.txt into .venv/" >&2; exit 1; }
    fi
    PY=.venv/bin/python
fi
