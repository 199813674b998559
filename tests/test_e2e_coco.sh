#!/bin/sh
# tests/test_e2e_coco.sh -- COCO through eq-loader and eqctl, on 127.0.0.1:
# `eqctl dataset synth --coco` makes a small set, `eqctl dataset info`
# detects it, eq-loader serves detection batches that `eqctl batch get`
# checks (every frame validated), draws (--png DIR: one PNG per image) and
# saves (--out); the same request twice gives the same bytes; val serves
# every image; a classification augmentation is refused by name; eq-loader
# takes a whole experiment config (other sections skipped, unknown keys in
# its own sections refused).
set -u

B=${EQ_BUILDDIR:-.}
LOADER=$B/eq-loader
CTL=$B/eqctl
if [ ! -x "$LOADER" ] || [ ! -x "$CTL" ]; then
    echo "FAIL: $LOADER or $CTL not built"
    exit 1
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-e2e-coco-XXXXXX") || exit 1
PID=""
cleanup() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

fails=0
ok() { echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }

"$CTL" dataset synth --coco "$T/coco" --classes 4 --train 12 --val 5 --min-side 64 --max-side 128 --seed 2 \
    >"$T/synth" 2>&1 && ok "dataset synth --coco" || { bad "dataset synth --coco"; cat "$T/synth"; }
"$CTL" dataset info "$T/coco" >"$T/info" 2>&1 && grep -q "coco" "$T/info" && grep -q "train  12 samples, 4 classes" "$T/info" &&
    ok "dataset info detects COCO" || { bad "dataset info"; cat "$T/info"; }

# eq-loader reads a whole experiment file: [loader] and [data] strictly,
# the other sections skipped
cat >"$T/exp.cfg" <<CFG
[model]
arch = resnet18
something_only_the_trainer_knows = 1
[loader]
threads = 2
control =
datasets = coco=$T/coco
[data]
dataset = coco
aug_train = det
[optim]
lr = 0.1
CFG
sed 's/^aug_train = det/aug_train = det\nbogus = 1/' "$T/exp.cfg" >"$T/bad.cfg"
if "$LOADER" --config "$T/bad.cfg" >"$T/bad" 2>&1; then bad "unknown [data] key accepted"; else
    grep -q 'bad.cfg:11: \[data\] unknown key "bogus"' "$T/bad" && ok "unknown [data] key refused with file:line" ||
        { bad "unknown key message"; cat "$T/bad"; }
fi
"$LOADER" --config "$T/exp.cfg" --bind 'tcp://127.0.0.1:*' >"$T/log" 2>&1 &
PID=$!
LEP=""
i=0
while [ $i -lt 100 ] && [ -z "$LEP" ]; do
    LEP=$(sed -n 's/.*serving on \([^ ,]*\).*/\1/p' "$T/log")
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.1
    i=$((i + 1))
done
[ -n "$LEP" ] || { bad "eq-loader did not start"; cat "$T/log"; exit 1; }

get() { "$CTL" batch get --loader "$LEP" --timeout-ms 20000 --dataset coco --aug det --batch 4 \
    --set data.min_sizes=64,96 --set data.max_size=160 --set data.seed=9 "$@"; }
if get --png "$T/png" --out "$T/b.safetensors" >"$T/a" 2>&1; then
    n=$(ls "$T/png" | grep -c '\.png$')
    [ "$n" = 4 ] && ok "batch get --png DIR wrote 4 PNGs" || bad "batch get --png: $n PNGs"
    [ -s "$T/b.safetensors" ] && ok "batch get --out" || bad "batch get --out wrote nothing"
    grep -q "^boxes .* masks" "$T/a" && ok "summary lists boxes and masks" || { bad "summary"; cat "$T/a"; }
else
    bad "batch get (detection)"
    cat "$T/a"
fi
get --json --epoch 1 --step 1 >"$T/j1" 2>&1 && get --json --epoch 1 --step 1 >"$T/j2" 2>&1 &&
    cmp -s "$T/j1" "$T/j2" && ok "same request, same batch" || { bad "determinism"; cat "$T/j1" "$T/j2"; }
grep -q '"categories":\[1,2,3,4\]' "$T/j1" && ok "JOB_OK carries the class mapping" || { bad "categories"; cat "$T/j1"; }
get --json --split val --set data.min_size_val=80 --count 5 --batch 5 >"$T/v" 2>&1 &&
    grep -q '"size":5,' "$T/v" && grep -q '"count":5,' "$T/v" && ok "val serves every image" || { bad "val"; cat "$T/v"; }
if "$CTL" batch get --loader "$LEP" --timeout-ms 20000 --dataset coco --aug rrc --size 64 --channels 3 >"$T/r" 2>&1; then
    bad "rrc on a COCO dataset accepted"
else
    grep -q 'aug \\"det\\"\|aug "det"' "$T/r" && ok "rrc on COCO refused by name" || { bad "rrc error"; cat "$T/r"; }
fi
kill "$PID" 2>/dev/null
wait "$PID" 2>/dev/null
PID=""
[ "$fails" = 0 ] || exit 1
echo "all ok"
