#!/bin/sh
# tests/test_configs.sh -- every shipped experiment file (configs/**/*.cfg)
# is read by the programs' own schema and runs: `eqctl run CONFIG` with
# --set overrides that point the loader at a tiny synthetic ImageFolder made
# here and shrink the job (32x32 images, batch 4, 2 steps of one epoch, a
# thin network, 8 val samples, one thread).  The file itself is parsed in
# full first (an unknown section or key, or a bad value, exits 2 before any
# override is applied), then its model, quantizers, optimiser and schedule
# policy are built and stepped.  Fails if any config exits non-zero.
#
# What the overrides change, per config: the data set and its geometry
# (3-channel 32x32 JPEGs, centre-cropped where the
# recipe pads and crops an in-memory set), the batch, the width (width_alpha 0.125), the
# epochs (1, with no lr milestones: a 40-epoch milestone list is invalid for
# a 1-epoch run), threads, out_dir, and mean/std (3 channels).  The recipe's
# architecture, keywords, quantizer options, optimiser and lr policy are
# kept.  Every run is bounded by `timeout`.
set -u

B=${EQ_BUILDDIR:-.}
SRC=${EQ_SRCDIR:-$(dirname "$0")/..}
CTL=$B/eqctl
for p in eqctl eq-loader eq-trainer; do
    if [ ! -x "$B/$p" ]; then
        echo "FAIL: $B/$p not built"
        exit 1
    fi
done
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-configs-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
trap 'exit 1' INT TERM

fails=0
passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }

# 4 classes, 4 train and 2 val images per class.
if ! "$CTL" dataset synth "$T/ds" --classes 4 --per-class 4 --val-per-class 2 --mean-pixels 1024 --seed 5 \
    >"$T/synth.out" 2>&1; then
    echo "FAIL: eqctl dataset synth"
    cat "$T/synth.out"
    exit 1
fi

cfgs=$(find "$SRC/configs" -name '*.cfg' | LC_ALL=C sort)
if [ -z "$cfgs" ]; then
    echo "FAIL: no configs under $SRC/configs"
    exit 1
fi

# One eq-loader serves the synthetic set to every run (eqctl run would
# start a loader and an eq-eval per config: seconds each on a CUDA build).
LOADER_PID=""
stop_loader() {
    if [ -n "$LOADER_PID" ]; then
        kill "$LOADER_PID" 2>/dev/null
        wait "$LOADER_PID" 2>/dev/null
        LOADER_PID=""
    fi
}
trap 'stop_loader; rm -rf "$T"' EXIT
"$B/eq-loader" --bind "ipc://$T/data" --control "" --dataset "tiny=$T/ds" --threads 2 \
    >"$T/loader.log" 2>&1 &
LOADER_PID=$!
i=0
while [ ! -S "$T/data" ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
if [ ! -S "$T/data" ]; then
    echo "FAIL: eq-loader did not bind ipc://$T/data"
    cat "$T/loader.log"
    exit 1
fi

# eq-trainer on CONFIG with the overrides that shrink the job; extra
# arguments go last.
train() {
    cfg=$1
    out=$2
    shift 2
    # padcrop needs an in-memory set (IDX, CIFAR) whose stored size is the
    # output size: the synthetic JPEGs get a centre crop instead.
    aug=""
    if grep -q '^aug_train *= *padcrop' "$cfg"; then aug="--set data.aug_train=center"; fi
    # shellcheck disable=SC2086
    timeout 60 "$B/eq-trainer" --config "$cfg" --loaders "ipc://$T/data" \
        --set data.dataset=tiny --set data.height=32 --set data.width=32 --set data.channels=3 \
        --set data.global_batch=4 --set data.resize=36 $aug \
        --set model.in_channels=3 --set model.width_alpha=0.125 \
        --set schedule.epochs=1 --set schedule.lr_custom_step= \
        --set train.max_steps=2 --set train.eval_max=8 --set train.log_every=1 --set train.threads=1 \
        --set train.mean=0.5,0.5,0.5 --set train.std=0.25,0.25,0.25 \
        --set train.out_dir="$out" --set train.timeout_ms=20000 "$@"
}

# A config with an unknown key must be refused with exit 2 naming the key:
# this test's method of checking would be void otherwise.
first=$(echo "$cfgs" | head -n 1)
{
    cat "$first"
    printf '\n[optim]\nno_such_key = 1\n'
} >"$T/bad.cfg"
train "$T/bad.cfg" "$T/outbad" >"$T/bad.out" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q 'no_such_key' "$T/bad.out"; then ok "an unknown key is refused (exit 2)"; else
    bad "an unknown key: exit $rc (expected 2 naming the key)"
    cat "$T/bad.out"
fi

# One config: parse it and run two steps; the verdict goes to $T/resN.
run_one() {
    train "$2" "$T/out$1" >"$T/run$1.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ] && [ -f "$T/out$1/last.safetensors" ]; then echo ok >"$T/res$1"; else
        echo "exit $rc" >"$T/res$1"
    fi
}

# Two runs at a time (much of a run is process start-up).
n=0
pids=""
for cfg in $cfgs; do
    n=$((n + 1))
    run_one $n "$cfg" &
    pids="$pids $!"
    if [ $((n % 2)) -eq 0 ]; then
        # shellcheck disable=SC2086
        wait $pids
        pids=""
    fi
done
# shellcheck disable=SC2086
[ -z "$pids" ] || wait $pids

n=0
for cfg in $cfgs; do
    n=$((n + 1))
    name=${cfg#"$SRC/"}
    res=$(cat "$T/res$n" 2>/dev/null || echo "no result")
    if [ "$res" = ok ]; then ok "$name"; else
        bad "$name: eq-trainer $res"
        tail -n 20 "$T/run$n.out"
    fi
done
stop_loader

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
