#!/bin/sh
# tests/test_e2e_train.sh -- the whole system on this machine: `eqctl run`
# starts a real eq-loader, eq-eval (serve) and eq-trainer on ipc endpoints
# and trains a tiny quantized ResNet-20 on a synthetic JPEG ImageFolder made
# here (no download, no Debian dataset needed).  Checks: a full run with
# eval exits 0, eq-eval counted every val sample once, checkpoint, metrics
# and plot written; resume continues from the checkpoint; a bad config
# exits 2; a loader that cannot start makes the run fail with 1; Ctrl-C
# (SIGINT) stops everything with exit 3 and a checkpoint; with two loaders,
# one killed by SIGKILL mid-run, training goes on and every val sample is
# counted once; precision fp16 (dynamic loss scaling) trains and reports
# its scale; a bad loss_scale exits 2; fp16 with a quantization loss on two
# ranks stops both with the error.  Every wait is bounded.
set -u

B=${EQ_BUILDDIR:-.}
CTL=$B/eqctl
for p in eqctl eq-loader eq-eval eq-trainer; do
    if [ ! -x "$B/$p" ]; then
        echo "FAIL: $B/$p not built"
        exit 1
    fi
done
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-e2e-train-XXXXXX") || exit 1
RUNPID=""
cleanup() {
    if [ -n "$RUNPID" ]; then
        kill "$RUNPID" 2>/dev/null
        wait "$RUNPID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fails=0
passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
dump() { for f in "$@"; do [ -f "$f" ] && { echo "--- $f"; tail -n 30 "$f"; }; done; }
# Wait (30 s at most) until the run writing to DIR has logged a train step.
wait_training() {
    i=0
    while [ $i -lt 300 ] && ! grep -q '"kind":"train"' "$1/metrics.jsonl" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
}
# Wait (90 s at most) for $RUNPID to exit; false if it is still running.
wait_run_exit() {
    i=0
    while [ $i -lt 900 ] && kill -0 "$RUNPID" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    ! kill -0 "$RUNPID" 2>/dev/null
}

# A tiny 4-class ImageFolder: 24 train and 8 val images per class.
if "$CTL" dataset synth "$T/ds" --classes 4 --per-class 24 --val-per-class 8 --mean-pixels 1024 --seed 3 \
    >"$T/synth.out" 2>&1; then ok "synthetic dataset"; else
    bad "eqctl dataset synth"
    cat "$T/synth.out"
    exit 1
fi

cat >"$T/tiny.cfg" <<EOF
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
[train]
name = tiny
mean = 0.5, 0.5, 0.5
std = 0.25, 0.25, 0.25
log_every = 2
threads = 1
out_dir = $T/out
timeout_ms = 20000
EOF

# 1. A full run: 6 steps, val of 32 samples (two batches, the last one full).
timeout 120 "$CTL" run "$T/tiny.cfg" --json >"$T/run1.json" 2>"$T/run1.err"
rc=$?
if [ $rc -eq 0 ]; then ok "eqctl run exits 0"; else
    bad "eqctl run exit $rc"
    cat "$T/run1.json" "$T/run1.err"
    dump "$T/out/logs/trainer.log" "$T/out/logs/eval.log" "$T/out/logs/loader0.log"
fi
grep -q '"ok":true' "$T/run1.json" && grep -q '"top1":' "$T/run1.json" &&
    ok "summary (--json) has the Top-1 from eq-eval" || bad "summary: $(cat "$T/run1.json")"
grep -q '"samples":32,' "$T/out/eval.jsonl" && ok "eq-eval counted the 32 val samples" ||
    bad "eval.jsonl: $(cat "$T/out/eval.jsonl" 2>/dev/null)"
for f in last.safetensors epoch0.safetensors metrics.jsonl metrics.svg logs/trainer.log; do
    [ -s "$T/out/$f" ] && ok "wrote $f" || bad "missing $T/out/$f"
done
grep -q '"kind":"train"' "$T/out/metrics.jsonl" && ok "metrics.jsonl has train records" ||
    bad "metrics.jsonl: $(cat "$T/out/metrics.jsonl")"
grep -q 'data-wait' "$T/out/logs/trainer.log" && ok "trainer logs progress with data-wait" ||
    dump "$T/out/logs/trainer.log"

# 2. Resume: two epochs from the first run's end-of-epoch checkpoint.
timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --resume "$T/out/last.safetensors" \
    >"$T/run2.out" 2>"$T/run2.err"
rc=$?
if [ $rc -eq 0 ] && grep -q 'resumed from .* at epoch 1 step 0' "$T/out/logs/trainer.log" &&
    grep -q '"epoch":1,"top1"' "$T/out/eval.jsonl"; then ok "resume continues at epoch 1 and evaluates it"; else
    bad "resume (exit $rc)"
    cat "$T/run2.out" "$T/run2.err"
    dump "$T/out/logs/trainer.log" "$T/out/eval.jsonl"
fi

# 3. A bad config is refused before anything starts.
timeout 20 "$CTL" run "$T/tiny.cfg" --set train.bogus=1 >"$T/run3.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "bogus" "$T/run3.out" && ok "bad key: exit 2 naming it" ||
    bad "bad key: exit $rc: $(cat "$T/run3.out")"

# 4. A loader that cannot start (no such dataset directory): exit 1, bounded.
timeout 60 "$CTL" run "$T/tiny.cfg" --set "loader.datasets=tiny=$T/nowhere" --set "train.out_dir=$T/out4" \
    >"$T/run4.out" 2>"$T/run4.err"
rc=$?
[ $rc -eq 1 ] && grep -q "eq-loader 0" "$T/run4.out" && ok "failed loader: exit 1 naming it" ||
    bad "failed loader: exit $rc: $(cat "$T/run4.out" "$T/run4.err")"

# 5. Ctrl-C: a long run interrupted once training is under way: exit 3, checkpoint.
"$CTL" run "$T/tiny.cfg" --set schedule.epochs=1000 --set "train.out_dir=$T/out5" >"$T/run5.out" 2>"$T/run5.err" &
RUNPID=$!
i=0
while [ $i -lt 300 ] && ! grep -q '"kind":"train"' "$T/out5/metrics.jsonl" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
kill -INT "$RUNPID"
i=0
while [ $i -lt 300 ] && kill -0 "$RUNPID" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
if kill -0 "$RUNPID" 2>/dev/null; then
    bad "eqctl run did not stop within 30 s of SIGINT"
else
    wait "$RUNPID"
    rc=$?
    RUNPID=""
    [ $rc -eq 3 ] && [ -s "$T/out5/last.safetensors" ] && grep -q interrupted "$T/run5.out" &&
        ok "SIGINT: exit 3 with a checkpoint" || {
        bad "SIGINT: exit $rc"
        cat "$T/run5.out" "$T/run5.err"
        dump "$T/out5/logs/trainer.log"
    }
fi
# 6. Two loaders, one frozen then killed with SIGKILL mid-run: the
# trainer re-issues its requests to the other, every epoch's val samples are
# counted exactly once, the run succeeds.
# Eight epochs: on a quiet machine three took under 2 s, so the run could
# end before eqctl noticed the killed loader.
"$CTL" run "$T/tiny.cfg" --loaders 2 --set schedule.epochs=8 --set train.timeout_ms=1500 \
    --set "train.out_dir=$T/out6" >"$T/run6.out" 2>"$T/run6.err" &
RUNPID=$!
wait_training "$T/out6"
# Freeze loader 1 first, so that requests are surely outstanding on it and
# time out, then kill it.
LPID=$(pgrep -f "loader1 --control .*tiny=$T/ds" | head -n 1)
if [ -n "$LPID" ]; then
    kill -STOP "$LPID"
    i=0
    while [ $i -lt 200 ] && ! grep -q "asking again elsewhere" "$T/out6/logs/trainer.log" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL "$LPID"
else
    bad "loader 1 not found"
fi
if ! wait_run_exit; then
    bad "two-loader run did not finish within 90 s"
else
    wait "$RUNPID"
    rc=$?
    RUNPID=""
    n=$(grep -c '"samples":32,' "$T/out6/eval.jsonl" 2>/dev/null)
    if [ $rc -eq 0 ] && [ "$n" = 8 ] && grep -q "going on with 1 loader" "$T/run6.err" &&
        grep -q "asking again elsewhere" "$T/out6/logs/trainer.log"; then
        ok "a loader killed mid-run: training goes on, 8 epochs of 32 val samples counted once"
    else
        bad "kill a loader: exit $rc, $n complete evaluations"
        cat "$T/run6.out" "$T/run6.err"
        dump "$T/out6/logs/trainer.log" "$T/out6/eval.jsonl"
    fi
fi

# 7. eqctl loader remove / add on a running trainer's control socket: the
# trainer stops using loader 1 and takes it back, the run still counts
# every val sample once per epoch; an unknown loader is refused (exit 1).
"$CTL" run "$T/tiny.cfg" --loaders 2 --set schedule.epochs=25 --set "train.out_dir=$T/out7" \
    >"$T/run7.out" 2>"$T/run7.err" &
RUNPID=$!
wait_training "$T/out7"
TCMD=$(pgrep -af "eq-trainer.*$T/out7" | head -n 1)
TCTL=$(printf '%s\n' "$TCMD" | sed -n 's/.* --control \([^ ]*\).*/\1/p')
# eqctl run puts every socket in one directory: loader1 beside trainer.ctl.
L1=""
case "$TCTL" in */trainer.ctl) L1=${TCTL%/trainer.ctl}/loader1 ;; esac
if [ -n "$TCTL" ] && [ -n "$L1" ] && "$CTL" loader remove "$TCTL" "$L1" >"$T/rm7.out" 2>&1 &&
    "$CTL" loader add "$TCTL" "$L1" >"$T/add7.out" 2>&1; then
    if "$CTL" loader remove "$TCTL" ipc://nowhere >"$T/rm7b.out" 2>&1; then
        bad "eqctl loader remove of an unknown loader succeeded"
    else
        ok "eqctl loader remove/add on a running trainer; an unknown loader refused"
    fi
else
    bad "eqctl loader remove/add: ctl '$TCTL' loader '$L1': $(cat "$T/rm7.out" "$T/add7.out" 2>/dev/null)"
fi
if ! wait_run_exit; then
    bad "remove/add run did not finish within 90 s"
else
    wait "$RUNPID"
    rc=$?
    RUNPID=""
    n=$(grep -c '"samples":32,' "$T/out7/eval.jsonl" 2>/dev/null)
    if [ $rc -eq 0 ] && [ "$n" = 25 ] && grep -q "removed loader" "$T/out7/logs/trainer.log" &&
        grep -q "added loader" "$T/out7/logs/trainer.log"; then
        ok "a loader removed and added back at run time: 25 epochs of 32 val samples counted once"
    else
        bad "remove/add a loader: exit $rc, $n complete evaluations"
        cat "$T/run7.out" "$T/run7.err"
        dump "$T/out7/logs/trainer.log" "$T/out7/eval.jsonl"
    fi
fi

# 8. A detection job ([data] aug_train = det) is refused by the trainer
# before it asks any loader: it has class labels to train on only.
if "$B/eq-trainer" --config "$T/tiny.cfg" --set data.aug_train=det --loaders "ipc://$T/none" \
    >"$T/det8.out" 2>&1; then
    bad "eq-trainer accepted aug_train = det"
elif grep -q "aug_train = det" "$T/det8.out"; then
    ok "eq-trainer refuses a detection job, naming [data] aug_train"
else
    bad "aug_train = det: $(cat "$T/det8.out")"
fi

# 9. A policy file ([train] policy): at epoch 1 layer 0's weight quantizer
# drops from 16 to 15 levels (progressive: its clip is rescaled).  The
# per-epoch "quant" lines of metrics.jsonl show it; a run resumed after
# epoch 1 re-applies the option only (still 15 levels, not 14); a policy
# naming a layer the model does not have stops the trainer naming file:line,
# and eqctl run's summary says which part failed and why.
cat >"$T/policy.txt" <<EOF
# progressive LSQ on the first layer's weights
on epoch: 1
by_index: 0
by_tag: wt
progressive: true
level_num: -1
EOF
L0WT='"index":0,"layer":"layer1.0.conv1","tag":"wt","method":"lsq","levels"'
L1WT='"index":1,"layer":"layer1.0.conv2","tag":"wt","method":"lsq","levels"'
timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --set "train.policy=$T/policy.txt" \
    --set "train.out_dir=$T/out9" >"$T/run9.out" 2>"$T/run9.err"
rc=$?
if [ $rc -eq 0 ] && grep '"kind":"quant","epoch":0,' "$T/out9/metrics.jsonl" | grep -q "$L0WT:16," &&
    grep '"kind":"quant","epoch":1,' "$T/out9/metrics.jsonl" | grep -q "$L0WT:15," &&
    grep '"kind":"quant","epoch":1,' "$T/out9/metrics.jsonl" | grep -q "$L1WT:16," &&
    grep -q '"kind":"policy","section":"epoch","epoch":1,"options_only":false' "$T/out9/metrics.jsonl" &&
    grep -q 'policy.txt:6: level_num: -1 on 1 quantizer(s), e.g. layer 0 (layer1.0.conv1) wt: 16 -> 15' \
        "$T/out9/logs/trainer.log"; then
    ok "policy: epoch 1 changes layer 0's weight levels 16 -> 15, seen in the quant metrics"
else
    bad "policy run (exit $rc)"
    cat "$T/run9.out" "$T/run9.err"
    dump "$T/out9/logs/trainer.log" "$T/out9/metrics.jsonl"
fi
grep '"kind":"quant","epoch":1,' "$T/out9/metrics.jsonl" | grep -q '"clip_val":.*"frac":\[' &&
    ok "quant metrics carry clip values and level fractions" || bad "no clip_val/frac in the quant line"
timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=3 --set "train.policy=$T/policy.txt" \
    --set "train.out_dir=$T/out9" --resume "$T/out9/last.safetensors" >"$T/run9b.out" 2>"$T/run9b.err"
rc=$?
if [ $rc -eq 0 ] && grep '"kind":"quant","epoch":2,' "$T/out9/metrics.jsonl" | grep -q "$L0WT:15," &&
    grep -q '"kind":"policy","section":"epoch","epoch":1,"options_only":true' "$T/out9/metrics.jsonl"; then
    ok "policy after a resume: epoch 1's option re-applied, its level change not twice"
else
    bad "policy resume (exit $rc)"
    cat "$T/run9b.out" "$T/run9b.err"
    dump "$T/out9/logs/trainer.log" "$T/out9/metrics.jsonl"
fi
# eqctl run --policy: every activation quantizer off at init (the layers
# see full-precision inputs, no level fractions), on again at epoch 1 (each
# fm quantizer reports its fractions); the policy line lists the changes.
cat >"$T/policy_en.txt" <<EOF
on init:
by_index: all
by_tag: fm
enable: False
on epoch: 1
by_index: all
by_tag: fm
enable: True
EOF
timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --policy "$T/policy_en.txt" \
    --set "train.out_dir=$T/out9e" >"$T/run9e.out" 2>"$T/run9e.err"
rc=$?
M9=$T/out9e/metrics.jsonl
fm0=$(grep '"kind":"quant","epoch":0,' "$M9" | grep -o '"tag":"fm"[^}]*' | grep -c '"frac"')
fm1=$(grep '"kind":"quant","epoch":1,' "$M9" | grep -o '"tag":"fm"[^}]*' | grep -c '"frac"')
nfm=$(grep '"kind":"quant","epoch":1,' "$M9" | grep -o '"tag":"fm"' | wc -l)
if [ $rc -eq 0 ] && [ "$fm0" -eq 0 ] && [ "$nfm" -gt 0 ] && [ "$fm1" -eq "$nfm" ] &&
    grep -q '"kind":"policy","section":"init".*"changes":\[{"line":4,"key":"enable","value":"False"' "$M9"; then
    ok "--policy: fm quantizers off at init (no fractions), on at epoch 1 ($fm1 of $nfm report fractions)"
else
    bad "policy enable (exit $rc, fm with fractions: epoch 0 $fm0, epoch 1 $fm1 of $nfm)"
    cat "$T/run9e.out" "$T/run9e.err"
    dump "$T/out9e/logs/trainer.log" "$M9"
fi
timeout 30 "$CTL" run "$T/tiny.cfg" --policy "$T/policy_en.txt" --set "train.policy=$T/policy.txt" \
    --set "train.out_dir=$T/out9f" >"$T/run9f.out" 2>&1
rc=$?
timeout 30 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders ipc:///nonexistent --policy "$T/policy_en.txt" \
    --set "train.policy=$T/policy.txt" >"$T/run9g.out" 2>&1
rc2=$?
[ $rc -eq 2 ] && [ $rc2 -eq 2 ] && ok "--policy and a different --set train.policy: exit 2 (eqctl run, eq-trainer)" ||
    bad "--policy vs --set train.policy: eqctl exit $rc, eq-trainer exit $rc2: $(cat "$T/run9f.out" "$T/run9g.out")"
printf 'on epoch: 1\nby_index: 3 99\nclip_val: 1\n' >"$T/policy_bad.txt"
timeout 60 "$CTL" run "$T/tiny.cfg" --set "train.policy=$T/policy_bad.txt" --set "train.out_dir=$T/out9c" \
    >"$T/run9c.out" 2>"$T/run9c.err"
rc=$?
# eqctl run's summary names the failed part and the error it logged.
if [ $rc -eq 1 ] &&
    grep -q "FAILED.*eq-trainer exit 1: .*policy_bad.txt:2: by_index 99: beyond the model.s 20 policy layers" \
        "$T/run9c.out"; then
    ok "a policy naming layer 99 of 20: exit 1, the summary names eq-trainer and file:line"
else
    bad "bad policy: exit $rc"
    cat "$T/run9c.out" "$T/run9c.err"
    dump "$T/out9c/logs/trainer.log"
fi

# 10. Mixed precision through `eqctl run` (an emulation on the CPU
# backend): fp16 with its default dynamic loss scaling trains two epochs to
# finite losses; the epoch lines carry the scale and the skipped steps; a
# bad loss_scale is refused before anything starts, naming key and value.
timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --set train.precision=fp16 \
    --set "train.out_dir=$T/out10" >"$T/run10.out" 2>"$T/run10.err"
rc=$?
M10=$T/out10/metrics.jsonl
ne=$(grep '"kind":"epoch"' "$M10" 2>/dev/null | grep -c '"loss_scale":[0-9][^,]*,"skipped":[0-9]')
if [ $rc -eq 0 ] && [ "$ne" -eq 2 ] && ! grep '"kind":"epoch"' "$M10" | grep -q '"loss":\(nan\|inf\|-inf\)' &&
    grep -q "precision fp16 on the cpu backend is an emulation" "$T/out10/logs/trainer.log"; then
    ok "precision fp16: 2 epochs, loss scale and skipped steps in metrics.jsonl ($(grep '"kind":"epoch"' "$M10" |
        tail -n 1 | grep -o '"loss_scale":[^}]*'))"
else
    bad "precision fp16: exit $rc, $ne epoch lines with a loss scale"
    cat "$T/run10.out" "$T/run10.err"
    dump "$T/out10/logs/trainer.log" "$M10"
fi
timeout 20 "$CTL" run "$T/tiny.cfg" --set train.loss_scale=huge >"$T/run10b.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "loss_scale = 'huge'" "$T/run10b.out" && ok "bad loss_scale: exit 2 naming it" ||
    bad "bad loss_scale: exit $rc: $(cat "$T/run10b.out")"
# fp16 on two ranks with a policy that enables a quantization loss at epoch
# 1: the quantizers scale that loss's gradient with the loss scale (the
# original's apex scales task + quantization loss), so the run trains
# through both epochs on both ranks, the quantization loss in the loss.
printf 'on epoch: 1\nby_index: all\nquant_loss_enable: True\nquant_loss_function: L2\nquant_loss_alpha: 0.1\n' \
    >"$T/policy_ql.txt"
timeout 90 "$CTL" run "$T/tiny.cfg" --ranks 2 --set schedule.epochs=2 --set train.precision=fp16 \
    --policy "$T/policy_ql.txt" --set "train.out_dir=$T/out10c" >"$T/run10c.out" 2>"$T/run10c.err"
rc=$?
M10c="$T/out10c/metrics.jsonl"
ne=$(grep -c '"kind":"epoch".*"loss_scale"' "$M10c" 2>/dev/null)
nq=$(grep -l "quant_loss_enable: True on" "$T/out10c/logs/trainer.log" "$T/out10c/logs/trainer1.log" 2>/dev/null | wc -l)
if [ $rc -eq 0 ] && [ "${ne:-0}" -ge 2 ] && [ "$nq" -eq 2 ]; then
    ok "fp16 + a policy's quantization loss on 2 ranks: both epochs trained, both ranks applied it"
else
    bad "fp16 + quantization loss on 2 ranks: exit $rc, $ne epoch lines, $nq rank logs applied it"
    cat "$T/run10c.out" "$T/run10c.err"
    dump "$T/out10c/logs/trainer.log" "$T/out10c/logs/trainer1.log"
fi

# No process of ours is left behind.
sleep 0.2
if pgrep -f "$T/" >/dev/null 2>&1; then bad "processes left: $(pgrep -af "$T/")"; else ok "no process left"; fi

echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
