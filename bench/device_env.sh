# Source from the checkout's root on a GPU machine without internet (bash): installs the carried wheels into
# /tmp/site and puts them on PYTHONPATH. On a machine with internet, `make install` and pip do this instead
# (BENCHMARKS.md, "Trainer on one H200"). The folders are git-ignored and made by hand (docs/benchmarks-history.md,
# "Trainer on one H200: the commands as run", says how); each one is optional:
#   .whl-trainer/  wheels of jsonschema and its needs (the image has none), and mistral-common's tokenizer.model.v1
#   .fa4a/         cutlass_ir_cu13.so.xz: the CuTe DSL's compiler library (193 MB, 50 MB as xz), which does not fit
#                  in one call beside the rest (64 MiB per call): a first call unpacks it into /tmp/stage, and it
#                  stays there while the machine is warm (30 s after each call)
#   .fa4b/         flash-attn-4 and the CuTe DSL's wheels (nvidia-cutlass-dsl-libs-cu13 without its two large
#                  libraries), and libcute_dsl_runtime.so.xz
SITE=/tmp/site
STAGE=/tmp/stage
IR=nvidia_cutlass_dsl/dsl_packages/cutlass/_mlir/_mlir_libs/_cutlass_ir.cu13.cpython-312-x86_64-linux-gnu.so
mkdir -p "$SITE" "$STAGE"
if [ -f .fa4a/cutlass_ir_cu13.so.xz ] && [ ! -f "$STAGE/ir.so" ]; then
    xz -dc .fa4a/cutlass_ir_cu13.so.xz > "$STAGE/ir.so.part" && mv "$STAGE/ir.so.part" "$STAGE/ir.so" && echo "device_env: compiler library staged in $STAGE"
fi
wheels=(.whl-trainer/*.whl)
[ -d .fa4b ] && wheels+=(.fa4b/*.whl)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" 2>&1 | grep -v "WARNING: Target directory" || true
if [ -d .fa4b ]; then
    mkdir -p "$SITE/nvidia_cutlass_dsl/cu13/lib"
    xz -dc .fa4b/libcute_dsl_runtime.so.xz > "$SITE/nvidia_cutlass_dsl/cu13/lib/libcute_dsl_runtime.so"
    if [ -f "$STAGE/ir.so" ]; then
        cp "$STAGE/ir.so" "$SITE/$IR" && echo "device_env: flash-attn-4 installed"
    else
        echo "device_env: flash-attn-4 NOT usable: the compiler library was not staged on this machine (.fa4a)"
    fi
fi
export PYTHONPATH="$SITE:$SITE/nvidia_cutlass_dsl/dsl_packages${PYTHONPATH:+:$PYTHONPATH}"
