#!/bin/sh
# tests/test_e2e_dist.sh -- eq-trainer's features beyond one plain run,
# with real processes through `eqctl run` on a tiny synthetic ImageFolder:
# two data-parallel ranks (rendezvous, ring all-reduce; eq-eval counts every
# val sample once), eval-only from a checkpoint and from pretrained weights
# (with the report of what did not match), mixup from the loaders' plan to
# the trainers' blend and loss, a NaN loss (exit 4 from every rank at the
# same step, the run fails saying so), and Ctrl-C on two ranks (same step,
# exit 3, checkpoint) then resuming on two ranks.  Every wait is bounded; about
# 30 s in all on the shared 2-core machine.
set -u

B=${EQ_BUILDDIR:-.}
CTL=$B/eqctl
for p in eqctl eq-loader eq-eval eq-trainer; do
    if [ ! -x "$B/$p" ]; then
        echo "FAIL: $B/$p not built"
        exit 1
    fi
done
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-e2e-dist-XXXXXX") || exit 1
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

if ! "$CTL" dataset synth "$T/ds" --classes 4 --per-class 24 --val-per-class 8 --mean-pixels 1024 --seed 3 \
    >"$T/synth.out" 2>&1; then
    cat "$T/synth.out"
    echo "FAIL: eqctl dataset synth"
    exit 1
fi
cat >"$T/tiny.cfg" <<EOC
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
dist_timeout_ms = 20000
EOC

# 1. Two ranks: each trains on half of every global step; eq-eval gets every
# val sample exactly once from the two of them.
timeout 120 "$CTL" run "$T/tiny.cfg" --ranks 2 --json >"$T/r1.json" 2>"$T/r1.err"
rc=$?
if [ $rc -eq 0 ] && grep -q '"samples":32,' "$T/out/eval.jsonl" && grep -q "all 2 ranks joined" "$T/out/logs/trainer.log" &&
    grep -q "batch 8 of 16 per step" "$T/out/logs/trainer1.log" &&
    grep -q "val predictions for 16 of 32 samples" "$T/out/logs/trainer1.log"; then
    ok "two ranks: rendezvous, half a global step each, 32 val samples counted once"
else
    bad "two ranks: exit $rc"
    cat "$T/r1.json" "$T/r1.err"
    dump "$T/out/logs/trainer.log" "$T/out/logs/trainer1.log" "$T/out/eval.jsonl"
fi
[ -s "$T/out/last.safetensors" ] && ok "rank 0 wrote the checkpoint" || bad "no checkpoint from the two ranks"

# 2. Eval only, from that checkpoint.
timeout 120 "$CTL" run "$T/tiny.cfg" --evaluate --resume "$T/out/last.safetensors" --set "train.out_dir=$T/ev" \
    --json >"$T/r2.json" 2>"$T/r2.err"
rc=$?
if [ $rc -eq 0 ] && grep -q '"top1":' "$T/r2.json" && grep -q '"samples":32,' "$T/ev/eval.jsonl" &&
    grep -q "evaluating .*last.safetensors (epoch 0)" "$T/ev/logs/trainer.log" && [ ! -e "$T/ev/last.safetensors" ]; then
    ok "--evaluate --resume: Top-1 from eq-eval, no training, no checkpoint"
else
    bad "--evaluate --resume: exit $rc"
    cat "$T/r2.json" "$T/r2.err"
    dump "$T/ev/logs/trainer.log" "$T/ev/eval.jsonl"
fi
top_a=$(sed 's/.*"top1":\([0-9.]*\).*/\1/' "$T/r1.json")
top_b=$(sed 's/.*"top1":\([0-9.]*\).*/\1/' "$T/r2.json")
[ "$top_a" = "$top_b" ] && ok "the evaluated checkpoint gives the training run's Top-1 ($top_a)" ||
    bad "Top-1 after training $top_a, evaluating the checkpoint $top_b"

# 2b. eq-eval's PUB messages never reach eqctl (a SUB that joins late misses
# what a short --evaluate run publishes): eqctl takes the result from the
# lines eq-eval appended to eval.jsonl during this run, within seconds.
mkdir -p "$T/bin"
for p in eqctl eq-loader eq-trainer; do cp "$B/$p" "$T/bin/$p"; done
cp "$B/eq-eval" "$T/bin/eq-eval.real"
cat >"$T/bin/eq-eval" <<EOW
#!/bin/sh
n=0
for a in "\$@"; do
    [ "\$prev" = --pub ] && a="ipc://$T/nobody-listens.pub"
    set -- "\$@" "\$a"
    prev=\$a
    n=\$((n + 1))
done
shift \$n
exec "$T/bin/eq-eval.real" "\$@"
EOW
chmod +x "$T/bin/eq-eval"
echo '{"epoch":0,"top1":99.0,"top5":99.0,"samples":32}' >"$T/ev2.jsonl.old"
mkdir -p "$T/ev2" && cp "$T/ev2.jsonl.old" "$T/ev2/eval.jsonl"
timeout 60 "$T/bin/eqctl" run "$T/tiny.cfg" --evaluate --resume "$T/out/last.safetensors" --set "train.out_dir=$T/ev2" \
    --json >"$T/r2b.json" 2>"$T/r2b.err"
rc=$?
top_c=$(sed 's/.*"top1":\([0-9.]*\).*/\1/' "$T/r2b.json")
if [ $rc -eq 0 ] && [ "$top_c" = "$top_b" ]; then
    ok "eq-eval's PUB lost: the result comes from this run's lines of eval.jsonl ($top_c)"
else
    bad "eq-eval's PUB lost: exit $rc, Top-1 '$top_c' (expected $top_b)"
    cat "$T/r2b.json" "$T/r2b.err"
fi

# 3. Pretrained: a full-precision checkpoint into the quantized model; the
# quantizer state is reported missing and keeps its initial values.
timeout 120 "$CTL" run "$T/tiny.cfg" --set quant.wt.enable=false --set quant.fm.enable=false \
    --set train.eval_every=0 --set "train.out_dir=$T/fp" >"$T/r3a.out" 2>&1
timeout 120 "$CTL" run "$T/tiny.cfg" --evaluate --pretrained "$T/fp/last.safetensors" --ranks 2 \
    --set "train.out_dir=$T/pre" >"$T/r3.out" 2>&1
rc=$?
L="$T/pre/logs/trainer.log"
if [ $rc -eq 0 ] && grep -q "pretrained .*: [0-9]* of [0-9]* model tensors loaded" "$L" &&
    grep -q "not in the file keep their initial values: .*quant_weight.clip_val" "$L" &&
    grep -q '"samples":32,' "$T/pre/eval.jsonl"; then
    ok "--pretrained: name-matched load, missing quantizer state named, evaluated on 2 ranks"
else
    bad "--pretrained: exit $rc"
    cat "$T/r3a.out" "$T/r3.out"
    dump "$L" "$T/pre/eval.jsonl"
fi
timeout 60 "$CTL" run "$T/tiny.cfg" --evaluate --pretrained "$T/tiny.cfg" --set "train.out_dir=$T/pre2" \
    >"$T/r3b.out" 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q "pretrained" "$T/pre2/logs/trainer.log" && ok "--pretrained with a file that is not safetensors: exit 1" ||
    bad "--pretrained bad file: exit $rc: $(cat "$T/r3b.out")"

# 5. Mixup end to end: the loaders plan it ([data] mixup_alpha, partners in
# blocks of the per-rank share), each rank blends in fp32 and mixes the loss;
# every train batch is mixed, eval is not.  A block that straddles the ranks
# is refused before training, naming the key.
timeout 120 "$CTL" run "$T/tiny.cfg" --ranks 2 --set data.mixup_alpha=0.7 --set data.mix_block=8 \
    --set "train.out_dir=$T/mix" >"$T/r5.out" 2>"$T/r5.err"
rc=$?
if [ $rc -eq 0 ] && grep -q '"kind":"epoch".*"mixed":6,' "$T/mix/metrics.jsonl" &&
    grep -q "6 of 6 batches mixed here" "$T/mix/logs/trainer1.log" && grep -q '"samples":32,' "$T/mix/eval.jsonl"; then
    ok "mixup on 2 ranks: every train batch blended and its loss mixed, 32 val samples"
else
    bad "mixup: exit $rc"
    cat "$T/r5.out" "$T/r5.err"
    dump "$T/mix/logs/trainer.log" "$T/mix/metrics.jsonl"
fi
timeout 60 "$CTL" run "$T/tiny.cfg" --ranks 2 --set data.mixup_alpha=0.7 --set "train.out_dir=$T/mix0" \
    >"$T/r5b.out" 2>&1
rc=$?
[ $rc -eq 1 ] && grep -q "set \[data\] mix_block to 8" "$T/mix0/logs/trainer.log" &&
    ok "mixup blocks straddling the ranks: refused naming [data] mix_block" ||
    bad "mixup with the default block on 2 ranks: exit $rc: $(cat "$T/r5b.out")"

# 4. A loss that becomes NaN/inf (an lr multiplied by 100 every epoch):
# every rank stops at the same step with exit 4, the run fails saying why,
# and the last checkpoint is the end of the epoch before.
timeout 120 "$CTL" run "$T/tiny.cfg" --ranks 2 --set optim.lr=100 --set schedule.policy=decay \
    --set schedule.lr_decay=100 --set schedule.epochs=30 --set train.max_steps=2 --set train.eval_every=0 \
    --set "train.out_dir=$T/nan" >"$T/r4.out" 2>"$T/r4.err"
rc=$?
s0=$(grep -o "loss is [NaifIt]* at epoch [0-9]* step [0-9]*" "$T/nan/logs/trainer.log")
s1=$(grep -o "loss is [NaifIt]* at epoch [0-9]* step [0-9]*" "$T/nan/logs/trainer1.log")
if [ $rc -eq 1 ] && grep -q "exit 4 (training diverged: a non-finite loss" "$T/r4.out" && [ -n "$s0" ] && [ "$s0" = "$s1" ]; then
    ok "NaN loss: both ranks stop with exit 4 at the same step ($s0), the run fails saying so"
else
    bad "NaN loss: exit $rc, rank 0 '$s0', rank 1 '$s1'"
    cat "$T/r4.out" "$T/r4.err"
    dump "$T/nan/logs/trainer.log" "$T/nan/logs/trainer1.log"
fi
e=$(echo "$s0" | sed 's/.*epoch \([0-9]*\) step.*/\1/')
if [ -n "$e" ] && [ -s "$T/nan/epoch$((e - 1)).safetensors" ] && [ ! -e "$T/nan/epoch$e.safetensors" ]; then
    ok "the last checkpoint is the end of epoch $((e - 1)); none of the failed epoch"
else
    bad "checkpoints after the NaN: $(ls "$T/nan")"
fi

# 6. Ctrl-C on two ranks: both stop at the same step, rank 0 writes the
# checkpoint, exit 3; two ranks resume from it at that step.
"$CTL" run "$T/tiny.cfg" --ranks 2 --set schedule.epochs=1000 --set train.eval_every=0 \
    --set "train.out_dir=$T/int" >"$T/r6.out" 2>"$T/r6.err" &
RUNPID=$!
i=0
while [ $i -lt 300 ] && ! grep -q '"kind":"train"' "$T/int/metrics.jsonl" 2>/dev/null; do
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
    kill -KILL "$RUNPID"
    bad "two ranks did not stop within 30 s of SIGINT"
fi
wait "$RUNPID"
rc=$?
RUNPID=""
pat='stopped a[a-z]* epoch [0-9]*\( step [0-9]*\)*'
a0=$(grep -o "$pat" "$T/int/logs/trainer.log")
a1=$(grep -o "$pat" "$T/int/logs/trainer1.log")
if [ $rc -eq 3 ] && [ -n "$a0" ] && [ "$a0" = "$a1" ] && [ -s "$T/int/last.safetensors" ]; then
    ok "SIGINT on two ranks: both $a0, exit 3, checkpoint"
else
    bad "SIGINT on two ranks: exit $rc, rank 0 '$a0', rank 1 '$a1'"
    cat "$T/r6.out" "$T/r6.err"
    dump "$T/int/logs/trainer.log" "$T/int/logs/trainer1.log"
fi
# "stopped at epoch E step S" resumes there; "stopped after epoch E" at E+1 step 0
case "$a0" in
"stopped at epoch "*) e=$(echo "$a0" | sed 's/.*epoch \([0-9]*\) step.*/\1/'); st=$(echo "$a0" | sed 's/.*step \([0-9]*\)/\1/') ;;
"stopped after epoch "*) e=$(($(echo "$a0" | sed 's/.*epoch \([0-9]*\)/\1/') + 1)); st=0 ;;
*) e="" ;;
esac
if [ -n "$e" ]; then
    timeout 120 "$CTL" run "$T/tiny.cfg" --ranks 2 --resume "$T/int/last.safetensors" --set "schedule.epochs=$((e + 1))" \
        --set "train.out_dir=$T/int" >"$T/r7.out" 2>"$T/r7.err"
    rc=$?
    if [ $rc -eq 0 ] && grep -q "resumed from .* at epoch $e step $st" "$T/int/logs/trainer1.log" &&
        grep -q "\"epoch\":$e,\"top1\"" "$T/int/eval.jsonl"; then
        ok "two ranks resume at epoch $e step $st and finish the epoch"
    else
        bad "resume on two ranks: exit $rc"
        cat "$T/r7.out" "$T/r7.err"
        dump "$T/int/logs/trainer.log" "$T/int/logs/trainer1.log"
    fi
fi

sleep 0.2
if pgrep -f "$T/" >/dev/null 2>&1; then bad "processes left: $(pgrep -af "$T/")"; else ok "no process left"; fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
