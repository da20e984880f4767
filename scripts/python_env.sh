# Sourced by run_train_test.sh and run_tests.sh: sets PY to a Python that has
# the requirements (run_tests.sh sets need=tests: the tests' too). $PYTHON
# wins; else the active python3 if it has them; else .venv/, created and
# filled on first use.
# The check finds the modules without importing them (importing TensorFlow
# alone takes seconds, at every start of a script).
modules='tensorflow tensorboard cv2 matplotlib rasterio pyogrio shapely exactextract pyarrow onnx onnxruntime openvino tf2onnx'
requirements=requirements.txt
if [ "${need:-}" = tests ]; then
    modules="$modules pytest xdist tifffile imagecodecs rio_cogeo cjio pyflakes stac_model"
    requirements=requirements-test.txt
fi
check="import sys, importlib.util as u; assert sys.version_info >= (3, 10); assert all(u.find_spec(m) for m in '$modules'.split())"
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif python3 -c "$check" 2>/dev/null; then
    PY=python3
else
    if ! .venv/bin/python -c "$check" 2>/dev/null; then
        echo "setting up .venv/ from $requirements (first run only)"
        python3 -m venv .venv && .venv/bin/python -m pip install -q --upgrade pip \
            && .venv/bin/python -m pip install -q -r "$requirements" \
            || { echo "could not install $requirements into .venv/" >&2; exit 1; }
    fi
    PY=.venv/bin/python
fi
