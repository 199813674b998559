#!/bin/sh
# bench/decode_bench.sh -- eq decode+augment vs torchvision+PIL on the same
# synthetic ImageNet-like files, one core each; prints images/s and ratios.
#   bench/decode_bench.sh [BUILD_DIR] [SECONDS] [CLASSES] [PER_CLASS]
# BUILD_DIR holds bench/decode_bench (default: .).  Needs /usr/bin/python3
# with python3-torchvision and python3-pil for the peer.
set -e
build=${1:-.}
secs=${2:-3}
classes=${3:-10}
per=${4:-20}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d "${TMPDIR:-/tmp}/eq-decode-bench-XXXXXX")
trap 'rm -rf "$dir"' EXIT
"$build/bench/decode_bench" --synth "$dir" --classes "$classes" --per-class "$per"
eq=$("$build/bench/decode_bench" --root "$dir" --seconds "$secs" --json)
"$build/bench/decode_bench" --root "$dir" --seconds "$secs" | sed 's/^/eq: /' >&2 || true
tv=$(/usr/bin/python3 "$here/decode_bench.py" "$dir" --seconds "$secs" --json)
echo "eq:          $eq"
echo "torchvision: $tv"
/usr/bin/python3 - "$eq" "$tv" <<'PY'
import json, sys
e, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print("files %d, mean %.0f bytes" % (e["files"], e["mean_bytes"]))
print("train: eq %.1f img/s vs torchvision %.1f img/s: %.2fx (full decode alone %.1f img/s)"
      % (e["eq_train"], t["tv_train"], e["eq_train"] / t["tv_train"], e["full_decode"]))
print("train, any M/8 DCT scale: %.2fx; DCT scaling off: %.2fx"
      % (e["eq_train_any"] / t["tv_train"], e["eq_train_nodct"] / t["tv_train"]))
print("val:   eq %.1f img/s vs torchvision %.1f img/s: %.2fx"
      % (e["eq_val"], t["tv_val"], e["eq_val"] / t["tv_val"]))
print("eq max RSS %d KiB" % e["max_rss_kb"])
PY
