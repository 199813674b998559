#!/bin/sh
# tests/test_harden_trainer.sh -- eq-trainer and `eqctl run` against a
# hostile or careless user, with real processes and files (about 25 s):
#
#  - --resume of a checkpoint with nothing left to train (epoch >= [schedule]
#    epochs): exit 2 at once naming it (it used to train nothing, exit 0, and
#    leave eqctl waiting 120 s for an evaluation that never came);
#  - --resume of a truncated file, a directory, negative run metadata, NaN
#    weights: refused naming the file and the key or tensor (negative epochs
#    used to wrap to 2^64-1 and end the run doing nothing); the good
#    last.safetensors in the output directory is left as it was;
#  - a second `eqctl run` on the output directory of a running one: exit 2
#    naming the first's pid, the first's logs are not truncated;
#  - eqctl killed with SIGKILL: every part gets SIGTERM (the trainer writes
#    its checkpoint) instead of training on with no one watching;
#  - SIGTERM to eqctl while the trainer is still starting: exit 3, not
#    "eq-trainer killed by signal 15";
#  - a policy file that does not parse: exit 2 before anything starts; a
#    trigger epoch past the schedule is warned about;
#  - an eq-trainer whose loaders do not answer says so after 5 s;
#  - --evaluate with --eval where no eq-eval listens: exit 1 naming the
#    endpoint after [train] eval_timeout (the predictions used to be
#    dropped silently, exit 0);
#  - [train] loader_timeout: eq-trainer gives up after it, naming the key;
#  - SIGTERM during the val pass: exit 3 saying the evaluation is lost and
#    the epoch-end checkpoint kept;
#  - (as root, where tmpfs can be mounted) a full disk during a checkpoint:
#    the run fails naming last.safetensors, the previous one is intact.
# Every wait is bounded.
set -u

B=${EQ_BUILDDIR:-.}
CTL=$B/eqctl
for p in eqctl eq-loader eq-eval eq-trainer; do
    if [ ! -x "$B/$p" ]; then
        echo "FAIL: $B/$p not built"
        exit 1
    fi
done
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-harden-t-XXXXXX") || exit 1
RUNPID=""
MNT=""
cleanup() {
    if [ -n "$RUNPID" ]; then
        kill "$RUNPID" 2>/dev/null
        wait "$RUNPID" 2>/dev/null
    fi
    [ -n "$MNT" ] && umount "$MNT" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fails=0
passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
dump() { for f in "$@"; do [ -f "$f" ] && { echo "--- $f"; tail -n 20 "$f"; }; done; }
# Wait (up to $2 tenths of a second) until file $1 contains $3.
wait_grep() {
    i=0
    while [ $i -lt "$2" ] && ! grep -q "$3" "$1" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    grep -q "$3" "$1" 2>/dev/null
}

if ! "$CTL" dataset synth "$T/ds" --classes 4 --per-class 24 --val-per-class 8 --mean-pixels 1024 --seed 3 \
    >"$T/synth.out" 2>&1; then
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

# A good checkpoint at the end of epoch 0 (resumes at epoch 1 step 0).
if timeout 120 "$CTL" run "$T/tiny.cfg" >"$T/run0.out" 2>&1 && [ -s "$T/out/last.safetensors" ]; then
    ok "a one-epoch run writes last.safetensors"
else
    bad "the first run"
    cat "$T/run0.out"
    dump "$T/out/logs/trainer.log"
    exit 1
fi
GOOD=$T/good.safetensors
cp "$T/out/last.safetensors" "$GOOD"

# 1. Nothing left to train: refused at once by eqctl run and eq-trainer.
t0=$(date +%s)
timeout 60 "$CTL" run "$T/tiny.cfg" --resume "$GOOD" >"$T/r1.out" 2>&1
rc=$?
t1=$(date +%s)
[ $rc -eq 2 ] && [ $((t1 - t0)) -lt 10 ] && grep -q "epoch 1 step 0 and \[schedule\] epochs = 1: nothing left to train" \
    "$T/r1.out" && ok "resume at the schedule's end: eqctl run exit 2 in $((t1 - t0)) s" ||
    bad "resume at the end: exit $rc after $((t1 - t0)) s: $(cat "$T/r1.out")"
timeout 20 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/none" --resume "$GOOD" >"$T/r1b.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "nothing left to train" "$T/r1b.out" && ok "resume at the schedule's end: eq-trainer exit 2" ||
    bad "eq-trainer resume at the end: exit $rc: $(cat "$T/r1b.out")"

# 2. Broken checkpoints: refused before anything starts, naming the file
# and what is wrong; the good last.safetensors of the output dir untouched.
HL=$(od -An -tu8 -N8 "$GOOD" | tr -d ' ')
head -c $((8 + HL + 1000)) "$GOOD" >"$T/trunc.safetensors"
mkdir "$T/dir.safetensors"
# Same-length edits of the header: step "0" -> "-1", one space less in the summary.
LC_ALL=C sed 's/"step":"0"/"step":"-1"/; s/"summary":"resnet20: /"summary":"resnet20:/' "$GOOD" >"$T/negstep.safetensors"
LC_ALL=C sed 's/"epoch":"1"/"epoch":"-1"/; s/"summary":"resnet20: /"summary":"resnet20:/' "$GOOD" >"$T/negepoch.safetensors"
for f in negstep negepoch; do
    [ "$(wc -c <"$T/$f.safetensors")" -eq "$(wc -c <"$GOOD")" ] || bad "$f: the header edit changed the size"
done
check_refused() { # name, expected text
    timeout 60 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --resume "$T/$1.safetensors" >"$T/r2$1.out" 2>&1
    rc=$?
    if [ $rc -eq 2 ] && grep -q "$1.safetensors.*$2" "$T/r2$1.out" && cmp -s "$GOOD" "$T/out/last.safetensors"; then
        ok "--resume $1: exit 2: $(tail -n 1 "$T/r2$1.out" | cut -c1-150)"
    else
        bad "--resume $1: exit $rc: $(cat "$T/r2$1.out")"
    fi
}
check_refused trunc "run past the end of the data"
check_refused dir "not a regular file"
check_refused negstep "metadata 'step' is negative"
check_refused negepoch "metadata 'epoch' is negative"
# NaN in conv1.weight's first element: the header gives its data offset.
OFF=$(head -c $((8 + HL)) "$GOOD" | tr -d '\000' | grep -o '"conv1.weight":{[^}]*}' |
    sed 's/.*"data_offsets":\[\([0-9]*\),.*/\1/')
cp "$GOOD" "$T/nan.safetensors"
if [ -n "$OFF" ] && printf '\000\000\300\177' | dd of="$T/nan.safetensors" bs=1 seek=$((8 + HL + OFF)) conv=notrunc \
    2>/dev/null; then
    timeout 60 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --resume "$T/nan.safetensors" >"$T/r2nan.out" 2>&1
    rc=$?
    [ $rc -eq 1 ] && grep -q "nan.safetensors: tensor 'conv1.weight': element 0 is NaN" "$T/r2nan.out" &&
        cmp -s "$GOOD" "$T/out/last.safetensors" && ok "--resume with a NaN weight: refused naming the tensor" ||
        bad "--resume nan: exit $rc: $(cat "$T/r2nan.out")"
else
    bad "could not find conv1.weight's offset in the header"
fi

# 3. A second eqctl run on the same output directory while one runs.
"$CTL" run "$T/tiny.cfg" --set schedule.epochs=1000 --set "train.out_dir=$T/out3" >"$T/r3.out" 2>"$T/r3.err" &
RUNPID=$!
if wait_grep "$T/out3/logs/trainer.log" 300 "epoch 0 step"; then
    n0=$(wc -l <"$T/out3/logs/trainer.log")
    timeout 30 "$CTL" run "$T/tiny.cfg" --set "train.out_dir=$T/out3" >"$T/r3b.out" 2>&1
    rc=$?
    n1=$(wc -l <"$T/out3/logs/trainer.log")
    [ $rc -eq 2 ] && grep -q "out3 is in use by another eqctl run (pid $RUNPID)" "$T/r3b.out" && [ "$n1" -ge "$n0" ] &&
        ok "a second eqctl run on a busy out_dir: exit 2 naming pid $RUNPID, logs kept" ||
        bad "second run on out3: exit $rc, trainer.log $n0 -> $n1 lines: $(cat "$T/r3b.out")"
else
    bad "the long run did not start training"
    dump "$T/r3.err" "$T/out3/logs/trainer.log"
fi

# 4. eqctl killed with SIGKILL: its parts get SIGTERM, the trainer
# checkpoints and exits; nothing of this run is left.
TPID=$(pgrep -f "eq-trainer.*$T/out3" | head -n 1)
kill -KILL "$RUNPID"
wait "$RUNPID" 2>/dev/null
RUNPID=""
i=0
while [ $i -lt 300 ] && pgrep -f "$T/out3|$T/ds" >/dev/null 2>&1; do
    sleep 0.1
    i=$((i + 1))
done
if pgrep -f "$T/out3|$T/ds" >/dev/null 2>&1; then
    bad "parts left running 30 s after eqctl was killed: $(pgrep -af "$T/out3|$T/ds")"
    pkill -KILL -f "$T/out3|$T/ds"
elif [ -n "$TPID" ] && [ -s "$T/out3/last.safetensors" ] &&
    grep -q "stopping: checkpoint at epoch\|WARN .*interrupted\|stopped during the val pass" "$T/out3/logs/trainer.log"; then
    # (a SIGTERM during the val pass stops there: the epoch's checkpoint is written)
    ok "eqctl killed: loaders, eq-eval and the trainer got SIGTERM and exited, a checkpoint is there"
else
    bad "eqctl killed: trainer $TPID did not checkpoint"
    dump "$T/out3/logs/trainer.log"
fi
rm -rf "$(grep -o '/tmp/eqctl-run-[A-Za-z0-9]*' "$T/out3/logs/trainer.log" 2>/dev/null | head -n 1)"

# 4b. SIGTERM to eqctl right after it started the parts: the trainer, still
# loading, stops cleanly (exit 3) instead of dying of the signal
# ("eq-trainer killed by signal 15" used to fail the run).
"$CTL" run "$T/tiny.cfg" --set schedule.epochs=1000 --set "train.out_dir=$T/out4" >"$T/r4.out" 2>"$T/r4.err" &
RUNPID=$!
wait_grep "$T/r4.err" 100 "eq-trainer rank(s) started"
kill -TERM "$RUNPID"
i=0
while [ $i -lt 600 ] && kill -0 "$RUNPID" 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
wait "$RUNPID"
rc=$?
RUNPID=""
[ $rc -eq 3 ] && grep -q "interrupted after" "$T/r4.out" && ! grep -q "killed by signal" "$T/r4.out" &&
    ok "SIGTERM at start-up: exit 3, the trainer stopped cleanly" ||
    bad "SIGTERM at start-up: exit $rc: $(cat "$T/r4.out" "$T/r4.err")"
rm -rf "$(grep -o '/tmp/eqctl-run-[A-Za-z0-9]*' "$T/out4/logs/trainer.log" 2>/dev/null | head -n 1)"

# 5. Policy files: a syntax error stops eqctl run before anything starts;
# a trigger past the schedule's last epoch is warned about; a line without
# ':' (a forgotten colon) is named.
printf 'on epoch: one\nby_index: all\nenable: False\n' >"$T/pbad.txt"
timeout 20 "$CTL" run "$T/tiny.cfg" --policy "$T/pbad.txt" --set "train.out_dir=$T/out5" >"$T/r5.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "pbad.txt:1: trigger 'one' is not an epoch" "$T/r5.out" && [ ! -d "$T/out5/logs" ] &&
    ok "policy syntax error: exit 2 naming file:line, nothing started" || bad "bad policy: exit $rc: $(cat "$T/r5.out")"
printf 'on init:\nby_index all\n' >"$T/pcolon.txt"
timeout 20 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/none" --policy "$T/pcolon.txt" \
    >"$T/r5b.out" 2>&1 &
PID5=$!
wait_grep "$T/r5b.out" 100 "pcolon.txt:2: 'by_index all' has no ':' and ends the policy" &&
    ok "a policy line without ':' is named" || bad "no warning for a line without ':': $(cat "$T/r5b.out")"
# 6. ...and the same eq-trainer, with no loader at its endpoint, says so.
wait_grep "$T/r5b.out" 150 "no loader has answered the train job for 5 s (ipc://$T/none)" &&
    ok "eq-trainer without loaders warns after 5 s" || bad "no warning without loaders: $(cat "$T/r5b.out")"
kill -TERM $PID5 2>/dev/null
wait $PID5 2>/dev/null
printf 'on epoch: 3\nby_index: all\nenable: False\n' >"$T/plate.txt"
timeout 120 "$CTL" run "$T/tiny.cfg" --policy "$T/plate.txt" --set "train.out_dir=$T/out5c" >"$T/r5c.out" 2>&1
rc=$?
[ $rc -eq 0 ] && grep -q "plate.txt: trigger epoch 3 is past the last epoch" "$T/r5c.out" &&
    ok "a trigger past the schedule: warned, the run goes on" || bad "late trigger: exit $rc: $(cat "$T/r5c.out")"

# 7. A full disk during a checkpoint (needs a tmpfs: root only).
MNT=$T/small
mkdir "$MNT"
if mount -t tmpfs -o size=1300k tmpfs "$MNT" 2>/dev/null; then
    # Epoch 0 writes last and epoch0 (592 KiB each); epoch 1's last does not fit.
    timeout 120 "$CTL" run "$T/tiny.cfg" --set schedule.epochs=2 --set "train.out_dir=$MNT/o" >"$T/r7.out" 2>&1
    rc=$?
    # the surviving last.safetensors is epoch 0's (resumes at epoch 1) and reads back
    timeout 20 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/none" --set "train.out_dir=$MNT/o" \
        --resume "$MNT/o/last.safetensors" >"$T/r7b.out" 2>&1
    if [ $rc -eq 1 ] && grep -q "last.safetensors: not written: write to .*No space left on device" "$T/r7.out" &&
        grep -q "epoch 1 step 0 and" "$T/r7b.out"; then
        ok "disk full while writing a checkpoint: named, the previous last.safetensors (epoch 1) intact"
    else
        bad "disk full: exit $rc: $(cat "$T/r7.out" "$T/r7b.out" 2>/dev/null)"
    fi
    ls "$MNT/o" | grep -q tmp- && bad "a temporary file was left: $(ls "$MNT/o")"
    umount "$MNT"
else
    echo "skip: full disk (cannot mount a tmpfs here)"
fi
MNT=""

# 8-10 need a loader of their own (eq-trainer run by hand, no eqctl).
"$B/eq-loader" --bind "ipc://$T/l8" --control "" --dataset "tiny=$T/ds" --threads 1 >"$T/l8.log" 2>&1 &
LPID8=$!
# 8. --evaluate with --eval where no eq-eval listens: the predictions used
# to go into the pending connection's pipe, "sent to eq-eval", exit 0, and
# the linger dropped them.  Now: exit 1 naming the endpoint and the wait.
t0=$(date +%s)
timeout 30 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/l8" --eval "ipc://$T/noeval" --evaluate \
    --resume "$GOOD" --set train.eval_timeout=1 --set "train.out_dir=$T/out8" >"$T/r8.out" 2>&1
rc=$?
t1=$(date +%s)
[ $rc -eq 1 ] && [ $((t1 - t0)) -lt 15 ] &&
    grep -q "eq-eval at ipc://$T/noeval took no predictions of epoch 0 in 1 s" "$T/r8.out" &&
    ! grep -q "sent to eq-eval" "$T/r8.out" && ok "--evaluate without an eq-eval: exit 1 naming the endpoint" ||
    bad "--evaluate without eq-eval: exit $rc after $((t1 - t0)) s: $(cat "$T/r8.out")"
# 9. [train] loader_timeout: the give-up time without any loader reply
# (was a fixed 120 s); range-checked.
t0=$(date +%s)
timeout 30 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/none" --set train.loader_timeout=1 \
    --set "train.out_dir=$T/out9" >"$T/r9.out" 2>&1
rc=$?
t1=$(date +%s)
[ $rc -eq 1 ] && [ $((t1 - t0)) -lt 15 ] &&
    grep -q "no loader answered the train job in 1 s (ipc://$T/none; \[train\] loader_timeout)" "$T/r9.out" &&
    ok "loader_timeout = 1: gave up after $((t1 - t0)) s naming the key" ||
    bad "loader_timeout: exit $rc after $((t1 - t0)) s: $(cat "$T/r9.out")"
timeout 30 "$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/none" --set train.loader_timeout=0 \
    >"$T/r9b.out" 2>&1
rc=$?
[ $rc -eq 2 ] && grep -q "loader_timeout: 0 is out of range" "$T/r9b.out" && ok "loader_timeout = 0: exit 2" ||
    bad "loader_timeout = 0: exit $rc: $(cat "$T/r9b.out")"
# 10. SIGTERM during the val pass (here: waiting for an eq-eval that is not
# there): exit 3 saying the epoch's evaluation is lost and its checkpoint
# kept (it used to say only "feeder: interrupted").
"$B/eq-trainer" --config "$T/tiny.cfg" --loaders "ipc://$T/l8" --eval "ipc://$T/noeval" --set train.max_steps=2 \
    --set "train.out_dir=$T/out10" >"$T/r10.out" 2>&1 &
PID10=$!
if wait_grep "$T/r10.out" 300 "eq-eval at ipc://$T/noeval has taken no predictions for 5 s"; then
    kill -TERM $PID10
    i=0
    while [ $i -lt 100 ] && kill -0 $PID10 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -KILL $PID10 2>/dev/null
    wait $PID10
    rc=$?
    [ $rc -eq 3 ] && [ -s "$T/out10/epoch0.safetensors" ] &&
        grep -q "stopped during the val pass of epoch 0, after 0 of 32 samples: its evaluation is not reported; the epoch-end checkpoint is kept" "$T/r10.out" &&
        ok "SIGTERM during the val pass: exit 3, evaluation lost and checkpoint kept, said so" ||
        bad "SIGTERM during the val pass: exit $rc: $(cat "$T/r10.out")"
else
    bad "the val pass did not wait for eq-eval: $(cat "$T/r10.out")"
    kill -KILL $PID10 2>/dev/null
    wait $PID10 2>/dev/null
fi
kill -TERM $LPID8 2>/dev/null
wait $LPID8 2>/dev/null

sleep 0.2
if pgrep -f "$T/" >/dev/null 2>&1; then bad "processes left: $(pgrep -af "$T/")"; else ok "no process left"; fi
echo "$passes passed, $fails failed"
[ $fails -eq 0 ]
