#!/bin/sh
# tests/test_cuda_emu_train.sh -- eq-trainer with `backend = cuda` on the CPU
# emulation of CUDA (doc/gpu.md, "CPU emulation"): `eqctl run` with
# EQ_CUDA_PLUGIN pointing at the emulated module tests/.libs/eqcuda-emu.so
# trains a tiny ResNet-20 on a synthetic ImageFolder, and the same job runs
# on `backend = cpu`.  This exercises what check_cuda_emu cannot: the layer
# graph, optimiser, BN statistics, checkpoints and the training loop on a
# backend whose memory is not host memory.  Checks: both runs exit 0;
# full precision (quantizers disabled, lr 0.01): the first two step losses
# equal the CPU's as printed (6 digits) and all six agree within 1e-3; the
# default quantized model trains on the emulated backend (exit 0, six
# finite losses) and its first loss, a forward pass from the same initial
# weights, equals the CPU's.  Host waits (doc/gpu.md, "Host waits per
# step"): the emulated runtime counts them (EQ_CUDA_EMU_WAITS); the same
# jobs on a set twice as large (12 steps instead of 6) give the waits of
# six steady-state steps, and the "drained" waits per step (the host waits
# until the compute stream has nothing left to do) must not exceed
# today's: 0 full precision and bf16, 1 fp16 (the loss scaler's inf/NaN
# count over the gradient block), 1 quantized (the optimiser's downloads of the stepped
# quantizer parameters, which the next forward reads on the host; the
# quantizers' parameter gradients cost none since they are waited for once
# per backward with its tail still queued); the quantized count must stay
# above 0 (the counter works).
# An emulation is not a GPU run.
set -u

B=${EQ_BUILDDIR:-.}
CTL=$B/eqctl
MOD=$B/tests/.libs/eqcuda-emu.so
for p in eqctl eq-loader eq-eval eq-trainer; do
    if [ ! -x "$B/$p" ]; then
        echo "FAIL: $B/$p not built"
        exit 1
    fi
done
if [ ! -f "$MOD" ]; then
    echo "FAIL: $MOD not built (make check builds it)"
    exit 1
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-cuda-emu-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
trap 'exit 1' INT TERM

fails=0
passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
dump() { for f in "$@"; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done; }

if ! "$CTL" dataset synth "$T/ds" --classes 4 --per-class 24 --val-per-class 8 --mean-pixels 1024 --seed 3 \
    >"$T/synth.out" 2>&1; then
    bad "eqctl dataset synth"
    cat "$T/synth.out"
    exit 1
fi

cat >"$T/q.cfg" <<EOF
[loader]
threads = 1
datasets = tiny=$T/ds
[data]
dataset = tiny
height = 16
width = 16
channels = 3
global_batch = 16
aug_train = center
aug_val = center
[model]
num_classes = 4
in_channels = 3
width_alpha = 0.125
[optim]
lr = 0.01
[train]
name = tiny
mean = 0.5, 0.5, 0.5
std = 0.25, 0.25, 0.25
log_every = 1
threads = 1
timeout_ms = 20000
EOF
cp "$T/q.cfg" "$T/fp.cfg"
printf '[quant.wt]\nenable = false\n[quant.fm]\nenable = false\n' >>"$T/fp.cfg"

# run CFG BACKEND OUT [SET...]: one job (with --set SET each); the step
# losses in OUT/losses
run() {
    c=$1 be=$2 o=$3
    shift 3
    sets=""
    for a in "$@"; do sets="$sets --set $a"; done
    # shellcheck disable=SC2086
    EQ_CUDA_EMU_WAITS="$T/$o.waits" EQ_CUDA_PLUGIN=$MOD timeout 300 "$CTL" run "$T/$c" --set train.backend="$be" \
        --set train.out_dir="$T/$o" $sets >"$T/$o.out" 2>&1
    rc=$?
    if [ $rc -ne 0 ]; then
        bad "$c $* on $be: exit $rc"
        cat "$T/$o.out"
        dump "$T/$o/logs/trainer.log"
        return 1
    fi
    sed -n 's/.*"kind":"train".*"loss":\([^,]*\),.*/\1/p' "$T/$o/metrics.jsonl" >"$T/$o/losses"
    ok "$c $* on $be exits 0: losses $(tr '\n' ' ' <"$T/$o/losses")"
}

# near A B TOL: every line of A within TOL relative of B's, six lines each
near() {
    paste "$1" "$2" | awk -v tol="$3" '
        { n++; a = $1 + 0; b = $2 + 0; d = a - b; if (d < 0) d = -d;
          m = b < 0 ? -b : b; if (!(d <= tol * m)) bad++ }
        END { exit (n == 6 && !bad) ? 0 : 1 }'
}

if run fp.cfg cpu fp_cpu && run fp.cfg cuda fp_cuda; then
    # 1e-3: the two backends' summation orders differ by ~1e-7, which six
    # steps of training amplify (1.1e-4 by step 6 seen; identical before)
    [ "$(head -n 2 "$T/fp_cuda/losses")" = "$(head -n 2 "$T/fp_cpu/losses")" ] &&
        near "$T/fp_cuda/losses" "$T/fp_cpu/losses" 1e-3 &&
        ok "full precision: the first two losses equal the CPU's, all six within 1e-3" ||
        bad "full precision: losses $(tr '\n' ' ' <"$T/fp_cuda/losses") vs cpu $(tr '\n' ' ' <"$T/fp_cpu/losses")"
fi

if run q.cfg cpu q_cpu && run q.cfg cuda q_cuda; then
    n=$(awk '$1 + 0 == $1 + 0 && $1 + 0 > 0 && $1 + 0 < 100 { n++ } END { print n + 0 }' "$T/q_cuda/losses")
    [ "$n" -eq 6 ] && ok "quantized: six finite losses on the emulated CUDA backend" ||
        bad "quantized: losses $(tr '\n' ' ' <"$T/q_cuda/losses")"
    [ "$(head -n 1 "$T/q_cuda/losses")" = "$(head -n 1 "$T/q_cpu/losses")" ] &&
        ok "quantized: the first loss equals the CPU's" ||
        bad "quantized: first loss $(head -n 1 "$T/q_cuda/losses") vs cpu $(head -n 1 "$T/q_cpu/losses")"
fi

# Mixed precision through the whole trainer on the emulated backend: the
# layer graph's round_to after every layer, the 16-bit cuDNN plans (the
# emulated cuDNN rounds its 16-bit outputs), nonfinite and the loss
# scaler's device branch (fp16: dynamic scaling from 2^19, which overflows).  Against the
# CPU backend's emulation of the same precision: the first loss within
# 1e-3 (a forward from the same weights; the convolutions' summation orders
# differ, so a few elements round to the other neighbour), all six within
# 1e-2 (the issue's bound for 16-bit) after the same skipped steps (fp16:
# some, and the same number on both).
for p in bf16 fp16; do
    x=""
    [ $p = fp16 ] && x=train.loss_scale_init=524288 # 2^19: the first steps overflow and are skipped
    # shellcheck disable=SC2086
    if run fp.cfg cpu "${p}_cpu" train.precision=$p $x && run fp.cfg cuda "${p}_cuda" train.precision=$p $x; then
        near "$T/${p}_cuda/losses" "$T/${p}_cpu/losses" 1e-2 &&
            [ "$(head -n 1 "$T/${p}_cuda/losses" | awk -v b="$(head -n 1 "$T/${p}_cpu/losses")" \
                '{ d = $1 - b; if (d < 0) d = -d; print (d <= 1e-3 * b) ? "y" : "n" }')" = y ] &&
            ok "$p: the first loss within 1e-3 of the CPU's, all six within 1e-2" ||
            bad "$p: losses $(tr '\n' ' ' <"$T/${p}_cuda/losses") vs cpu $(tr '\n' ' ' <"$T/${p}_cpu/losses")"
    fi
done
sc() { grep -c "optimiser step skipped" "$T/$1/logs/trainer.log"; }
if [ -f "$T/fp16_cuda/logs/trainer.log" ] && [ -f "$T/fp16_cpu/logs/trainer.log" ]; then
    [ "$(sc fp16_cuda)" = "$(sc fp16_cpu)" ] && [ "$(sc fp16_cpu)" -ge 1 ] && [ "$(sc fp16_cpu)" -lt 6 ] &&
        grep -q '"loss_scale"' "$T/fp16_cuda/metrics.jsonl" &&
        ok "fp16: loss scaling on the emulated backend skips the CPU's $(sc fp16_cpu) step(s)" ||
        bad "fp16: $(sc fp16_cuda) skipped steps on cuda, $(sc fp16_cpu) on cpu"
fi

# Host waits per steady-state step: 12-step runs minus the 6-step ones.
# wcount FILE KEY: KEY's value in the one line the emulated runtime wrote
wcount() { sed -n "s/.* $2=\([0-9]*\).*/\1/p" "$1"; }
if "$CTL" dataset synth "$T/ds2" --classes 4 --per-class 48 --val-per-class 8 --mean-pixels 1024 --seed 3 \
    >"$T/synth2.out" 2>&1; then
    sed "s|tiny=$T/ds\$|tiny=$T/ds2|" "$T/q.cfg" >"$T/q2.cfg"
    sed "s|tiny=$T/ds\$|tiny=$T/ds2|" "$T/fp.cfg" >"$T/fp2.cfg"
    # mode, config, run of 6 steps, limit, extra settings
    for w in "fp fp fp_cuda 0" "bf16 fp bf16_cuda 0 train.precision=bf16" \
        "fp16 fp fp16_cuda 1 train.precision=fp16 train.loss_scale_init=524288" "q q q_cuda 1"; do
        # shellcheck disable=SC2086
        set -- $w
        m=$1 c=$2 r6=$3 lim=$4
        shift 4
        [ -f "$T/$r6.waits" ] || { bad "$m: no host-wait counts from the 6-step run ($T/$r6.waits)"; continue; }
        run "${c}2.cfg" cuda "${m}_12" "$@" || continue
        f6=$T/$r6.waits f12=$T/${m}_12.waits
        if [ "$(wc -l <"$f6")" -ne 1 ] || [ "$(wc -l <"$f12")" -ne 1 ] || ! grep -q "defer=1" "$f12"; then
            bad "$m: host-wait counts: $(cat "$f6" "$f12")"
            continue
        fi
        d=$(( $(wcount "$f12" drained) - $(wcount "$f6" drained) ))
        c6=$(( $(wcount "$f12" calls) - $(wcount "$f6" calls) ))
        echo "$m: per 6 steady-state steps: $c6 host waits, $d drained the compute stream"
        if [ "$d" -le $((6 * lim)) ] && { [ "$m" != q ] || [ "$d" -ge 6 ]; }; then
            ok "$m: drained host waits per step $(awk -v d="$d" 'BEGIN { print d / 6 }') <= $lim"
        else
            bad "$m: drained host waits per step $(awk -v d="$d" 'BEGIN { print d / 6 }'), limit $lim"
        fi
    done
else
    bad "eqctl dataset synth (48 per class)"
fi

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
