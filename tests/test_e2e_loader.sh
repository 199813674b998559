#!/bin/sh
# tests/test_e2e_loader.sh -- eq-loader and eqctl end to end, on 127.0.0.1
# only: a synthetic JPEG ImageFolder (made here) and, when Debian's
# dataset-fashion-mnist is installed, the embedded default.  Checks:
# determinism (the same (epoch, step, offset, count) twice gives the same
# bytes; two halves of a request equal the whole), PNG/safetensors output,
# errors for bad requests, status and stop over the control socket, SIGTERM,
# the refusal of a public bind without keys, and CURVE with eqctl's keys.  Every wait is bounded.
set -u

B=${EQ_BUILDDIR:-.}
LOADER=$B/eq-loader
CTL=$B/eqctl
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -x "$LOADER" ] || [ ! -x "$CTL" ]; then
    echo "FAIL: $LOADER or $CTL not built"
    exit 1
fi
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-e2e-loader-XXXXXX") || exit 1
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
passes=0
ok() { passes=$((passes + 1)); echo "ok: $*"; }
bad() { fails=$((fails + 1)); echo "FAIL: $*"; }
check() { # check DESCRIPTION COMMAND...
    d=$1
    shift
    if "$@" >"$T/out" 2>"$T/err"; then ok "$d"; else
        bad "$d (exit $?)"
        cat "$T/out" "$T/err"
    fi
}

# Start eq-loader on ephemeral ports; LEP and CEP get the real endpoints.
start_loader() {
    log=$1
    shift
    "$LOADER" --bind 'tcp://127.0.0.1:*' --control 'tcp://127.0.0.1:*' --threads 2 "$@" >"$log" 2>&1 &
    PID=$!
    i=0
    LEP=""
    while [ $i -lt 100 ]; do
        line=$(grep 'serving on' "$log" 2>/dev/null)
        if [ -n "$line" ]; then
            LEP=$(echo "$line" | sed 's/.*serving on \([^,]*\),.*/\1/')
            CEP=$(echo "$line" | sed 's/.*control on \([^ ]*\) .*/\1/')
            return 0
        fi
        kill -0 "$PID" 2>/dev/null || break
        sleep 0.1
        i=$((i + 1))
    done
    echo "eq-loader did not start:"
    cat "$log"
    return 1
}

# Wait (at most 10 s) for PID to exit; its status in RC.
wait_exit() {
    i=0
    while [ $i -lt 100 ] && kill -0 "$PID" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$PID" 2>/dev/null; then
        RC=124
        return 1
    fi
    wait "$PID"
    RC=$?
    PID=""
    return 0
}

# ---- datasets
check "dataset synth" "$CTL" dataset synth "$T/synth" --classes 3 --per-class 6 --val-per-class 2 \
    --mean-pixels 4096 --seed 1
check "dataset info" "$CTL" dataset info "$T/synth" --json
grep -q '"kind":"imagefolder"' "$T/out" && grep -q '"train":{"size":18,"classes":3' "$T/out" &&
    ok "dataset info: imagefolder, 18 train samples, 3 classes" || bad "dataset info output: $(cat "$T/out")"

DS="--dataset synth=$T/synth"
HAVE_FMNIST=0
if [ -f "$FMNIST/train-images-idx3-ubyte.gz" ]; then
    HAVE_FMNIST=1
    DS="$DS --dataset fashion-mnist=$FMNIST"
else
    echo "note: $FMNIST not installed (Debian package dataset-fashion-mnist); its checks are skipped"
fi

# ---- a public bind without keys is refused
if "$LOADER" --bind 'tcp://0.0.0.0:*' --control '' $DS >"$T/pub.log" 2>&1; then
    bad "public bind without CURVE was accepted"
else
    grep -q -- '--insecure' "$T/pub.log" && ok "public bind without CURVE refused" || bad "refusal message: $(cat "$T/pub.log")"
fi

# ---- serve
# shellcheck disable=SC2086
start_loader "$T/loader.log" $DS || exit 1
echo "loader on $LEP, control on $CEP"
G="--loader $LEP --dataset synth --size 32x32 --channels 3 --batch 8 --seed 5 --timeout-ms 20000"
# shellcheck disable=SC2086
check "batch get (synth)" "$CTL" batch get $G --epoch 1 --step 1 --raw "$T/a.raw" --png "$T/a.png" --out "$T/a.safetensors"
cat "$T/out"
grep -q 'images u8 \[8, 32, 32, 3\]' "$T/out" && ok "batch shape [8, 32, 32, 3]" || bad "batch shape"
# shellcheck disable=SC2086
check "same request again" "$CTL" batch get $G --epoch 1 --step 1 --raw "$T/b.raw"
cmp -s "$T/a.raw" "$T/b.raw" && ok "same request, same bytes" || bad "same request gave different bytes"
# shellcheck disable=SC2086
check "first 3" "$CTL" batch get $G --epoch 1 --step 1 --offset 0 --count 3 --raw "$T/c1.raw"
# shellcheck disable=SC2086
check "last 5" "$CTL" batch get $G --epoch 1 --step 1 --offset 3 --count 5 --raw "$T/c2.raw"
cat "$T/c1.raw" "$T/c2.raw" >"$T/c.raw"
cmp -s "$T/a.raw" "$T/c.raw" && ok "split request equals the whole" || bad "split request differs from the whole"
# shellcheck disable=SC2086
check "another epoch" "$CTL" batch get $G --epoch 2 --step 1 --raw "$T/d.raw"
cmp -s "$T/a.raw" "$T/d.raw" && bad "epochs 1 and 2 gave the same batch" || ok "another epoch, other bytes"
[ "$(od -An -c -N4 "$T/a.png" | tr -d ' ')" = '211PNG' ] && ok "PNG written" || bad "PNG signature"
[ -s "$T/a.safetensors" ] && ok "safetensors written" || bad "no safetensors file"
# shellcheck disable=SC2086
check "val split" "$CTL" batch get $G --split val --epoch 0 --step 0 --json
grep -q '"count":6,' "$T/out" && ok "val: short last (only) batch of 6" || bad "val batch: $(cat "$T/out")"

if [ $HAVE_FMNIST = 1 ]; then
    check "batch get (fashion-mnist)" "$CTL" batch get --loader "$LEP" --dataset fashion-mnist --split train \
        --epoch 0 --step 0 --count 64 --png "$T/f.png" --timeout-ms 30000
    cat "$T/out"
    grep -q 'images u8 \[64, 28, 28, 1\]' "$T/out" && ok "fashion-mnist batch [64, 28, 28, 1]" || bad "fashion-mnist shape"
    grep -q '60000 samples, 10 classes' "$T/out" && ok "fashion-mnist: 60000 samples, 10 classes" || bad "fashion-mnist size"
fi

# ---- bad requests are answered, the loader keeps serving
if "$CTL" batch get --loader "$LEP" --dataset nope --timeout-ms 20000 >"$T/out" 2>"$T/err"; then
    bad "undeclared dataset accepted"
else
    grep -q "not served by this loader" "$T/err" && ok "undeclared dataset refused" || bad "message: $(cat "$T/err")"
fi
# shellcheck disable=SC2086
if "$CTL" batch get $G --step 1000 >"$T/out" 2>"$T/err"; then bad "step past the epoch accepted"; else
    grep -q "ERROR invalid" "$T/err" && ok "step past the epoch refused" || bad "message: $(cat "$T/err")"
fi
check "status" "$CTL" status "$CEP" --json
grep -q '"ok":true' "$T/out" && grep -q '"batches_sent":' "$T/out" && ok "status JSON" || bad "status: $(cat "$T/out")"
check "status (text)" "$CTL" status "$CEP"
check "stop" "$CTL" stop "$CEP"
if wait_exit && [ "$RC" = 0 ]; then ok "stopped cleanly"; else bad "loader did not stop (rc $RC)"; fi

# ---- SIGTERM (this one reads the example config; the flags win)
# shellcheck disable=SC2086
start_loader "$T/loader2.log" --config "${EQ_SRCDIR:-.}/configs/fashion-mnist.cfg" $DS || exit 1
kill -TERM "$PID"
if wait_exit && [ "$RC" = 0 ]; then ok "SIGTERM: clean exit"; else bad "SIGTERM: rc $RC"; fi

# ---- CURVE: keys from eqctl keygen, an allow-list directory
mkdir -p "$T/keys/allowed"
check "keygen server" "$CTL" keygen "$T/keys/server"
check "keygen client" "$CTL" keygen "$T/keys/alice"
check "keygen other" "$CTL" keygen "$T/keys/mallory"
cp "$T/keys/alice.pub" "$T/keys/allowed/"
if "$CTL" keygen "$T/keys/alice" >"$T/out" 2>&1; then bad "keygen overwrote a key"; else ok "keygen refuses to overwrite"; fi
start_loader "$T/loader3.log" --dataset "synth=$T/synth" \
    --curve-secret "$T/keys/server.key" --curve-allow "$T/keys/allowed" || exit 1
# shellcheck disable=SC2086
check "CURVE: allowed client served" "$CTL" batch get $G --loader "$LEP" --count 2 \
    --server-key "$T/keys/server.pub" --key "$T/keys/alice.key"
# shellcheck disable=SC2086
if "$CTL" batch get $G --loader "$LEP" --count 2 --timeout-ms 1000 \
    --server-key "$T/keys/server.pub" --key "$T/keys/mallory.key" >"$T/out" 2>&1; then
    bad "CURVE: a key not on the allow-list was served"
else ok "CURVE: a key not on the allow-list is not served"; fi
# shellcheck disable=SC2086
if "$CTL" batch get $G --loader "$LEP" --count 2 --timeout-ms 1000 >"$T/out" 2>&1; then
    bad "CURVE: a plain client was served"
else ok "CURVE: a plain client is not served"; fi
check "CURVE: status with keys" "$CTL" status "$CEP" --server-key "$T/keys/server.pub" --key "$T/keys/alice.key"
kill -TERM "$PID"
if wait_exit && [ "$RC" = 0 ]; then ok "CURVE loader stopped"; else bad "CURVE loader: rc $RC"; fi

echo "$passes passed, $fails failed"
[ $fails = 0 ]
