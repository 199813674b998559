#!/bin/sh
# tests/test_eqctl_tools.sh -- eqctl's inspection tools reach their
# libraries: `eqctl quant apply` runs a committed reference case and writes
# the promised tensors (their values are checked against the references by
# tests/check_quant_fixtures through the same eq_quant_apply_file), a bad
# option or a missing file is a clear error naming it, `eqctl model`
# answers, doc/config-reference.md equals `eqctl config doc`, and
# `eqctl bench loader` measures both modes on a tiny synthetic set.
set -u
B=${EQ_BUILDDIR:-.}
S=${EQ_SRCDIR:-.}
CTL=$B/eqctl
[ -x "$CTL" ] || { echo "FAIL: $CTL not built"; exit 1; }
T=$(mktemp -d "${TMPDIR:-/tmp}/eq-ctl-tools-XXXXXX") || exit 1
trap 'rm -rf "$T"' EXIT
fail=0
case_dir=$S/tests/fixtures/quant/dorefa_wt_2b

# one training step of a reference case (its case.json: method dorefa, bit 2)
opts="method=dorefa bit=2"
# shellcheck disable=SC2086
if "$CTL" quant apply --tag wt --in "$case_dir/in.safetensors" --out "$T/out.safetensors" $opts \
    > "$T/apply.log" 2>&1 && [ -s "$T/out.safetensors" ]; then
    echo "ok: eqctl quant apply ($opts)"
else
    echo "FAIL: eqctl quant apply"; cat "$T/apply.log"; fail=1
fi
# the output names the tensors the issue promises
for name in '"y"' '"grad_x"'; do
    if head -c 4096 "$T/out.safetensors" | grep -q "$name"; then echo "ok: output holds $name"
    else echo "FAIL: output lacks $name"; fail=1; fi
done
# a bad option is refused, naming it
if "$CTL" quant apply --tag wt --in "$case_dir/in.safetensors" --out "$T/bad.safetensors" method=dorefa bitz=2 \
    > "$T/bad.log" 2>&1; then
    echo "FAIL: bad option accepted"; fail=1
elif grep -q "bitz" "$T/bad.log"; then echo "ok: bad option named"
else echo "FAIL: error does not name the option"; cat "$T/bad.log"; fail=1; fi
# a missing input file is refused, naming it
if "$CTL" quant apply --tag wt --in "$T/nope.safetensors" --out "$T/x.safetensors" method=dorefa \
    > "$T/miss.log" 2>&1; then
    echo "FAIL: missing input accepted"; fail=1
elif grep -q "nope.safetensors" "$T/miss.log"; then echo "ok: missing input named"
else echo "FAIL: error does not name the file"; cat "$T/miss.log"; fail=1; fi
# the methods list and the model tool answer
"$CTL" quant methods | grep -qx lsq && echo "ok: quant methods" || { echo "FAIL: quant methods"; fail=1; }
"$CTL" model help 2>&1 | grep -q "model run\|eq-model run" && echo "ok: model help" ||
    { echo "FAIL: model help"; fail=1; }
# doc/config-reference.md is what `eqctl config doc` writes today
if "$CTL" config doc --out "$T/ref.md" && tail -n +8 "$S/doc/config-reference.md" | cmp -s - "$T/ref.md"; then
    echo "ok: doc/config-reference.md is current"
else
    echo "FAIL: doc/config-reference.md differs from eqctl config doc (regenerate it)"; fail=1
fi
# eqctl bench loader on a tiny synthetic ImageFolder: both modes give a
# positive rate, and a missing root is an error naming it
if "$CTL" dataset synth "$T/ds" --classes 2 --per-class 4 --val-per-class 2 --mean-pixels 1024 > "$T/synth.log" 2>&1 &&
    "$CTL" bench loader --root "$T/ds" --pipeline train --threads 2 --seconds 1 --size 16 --json > "$T/bench.json" 2>&1 &&
    grep -Eq '"in_process":\{[^}]*"images_per_s":(0\.0*[1-9]|[1-9])' "$T/bench.json" &&
    grep -Eq '"server":\{[^}]*"images_per_s":(0\.0*[1-9]|[1-9])' "$T/bench.json"; then
    echo "ok: eqctl bench loader --json has positive rates in both modes"
else
    echo "FAIL: eqctl bench loader"; cat "$T/synth.log" "$T/bench.json"; fail=1
fi
if "$CTL" bench loader --root "$T/nope-ds" --pipeline val --seconds 1 > "$T/bench-miss.log" 2>&1; then
    echo "FAIL: bench loader accepted a missing root"; fail=1
elif grep -q "nope-ds" "$T/bench-miss.log"; then echo "ok: bench loader names the missing root"
else echo "FAIL: bench loader error does not name the root"; cat "$T/bench-miss.log"; fail=1; fi
# an unknown subcommand of a two-word command names both words, exit 2;
# an unreachable control endpoint is a bounded, named failure (exit 1)
"$CTL" loader frob a b > "$T/frob.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "unknown command 'loader frob'" "$T/frob.log"; then echo "ok: unknown subcommand named"
else echo "FAIL: eqctl loader frob: exit $rc: $(head -n 1 "$T/frob.log")"; fail=1; fi
timeout 20 "$CTL" status "ipc://$T/nobody" --timeout-ms 500 > "$T/nobody.log" 2>&1
rc=$?
if [ $rc -eq 1 ] && grep -q "ipc://$T/nobody: no answer within 500 ms" "$T/nobody.log"; then
    echo "ok: an unreachable endpoint times out, named"
else echo "FAIL: eqctl status of nobody: exit $rc: $(cat "$T/nobody.log")"; fail=1; fi
exit $fail
