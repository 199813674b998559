#!/bin/sh
# bench/coco_loader.sh -- eq's COCO loader against Python, same run:
#   1. index a COCO-train-sized instances file (generated once: 118287
#      images, ~860k annotations, ~450 MB): eq's parse (seconds, peak RSS),
#      its cache load, and Python's json.load of the same file;
#   2. images/s on one core of eq's train pipeline (shorter side 640..800,
#      longer <= 1333, flip, masks) and of the torchvision + PIL equivalent
#      (bench/coco_loader.py) on a synthetic COCO set.
#
#   bench/coco_loader.sh [BUILD_DIR [DIR [SECONDS [IMAGES]]]]
#
# DIR (default /tmp/eq-coco-loader-bench) keeps the generated files;
# IMAGES scales the instances file (default 118287).  Python is
# /usr/bin/python3 (PYTHON=... to change); the Python runs are skipped if
# it lacks torchvision.  Prints both numbers and their ratio, in CPU
# seconds (user + system) so that a loaded machine does not skew them.
set -eu
B=${1:-.}
D=${2:-/tmp/eq-coco-loader-bench}
SECS=${3:-20}
NIMG=${4:-118287}
PY=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")" && pwd)
BIN=$B/bench/coco_loader
CTL=$B/eqctl
[ -x "$BIN" ] || { echo "coco_loader.sh: $BIN not built (make bench/coco_loader)" >&2; exit 2; }
mkdir -p "$D"
J=$D/instances_train_$NIMG.json
[ -f "$J" ] || { echo "generating $J ..."; "$BIN" gen "$J" "$NIMG"; }
ls -l "$J" | awk '{printf "instances file: %.0f MB\n", $5 / 1e6}'
"$BIN" index "$J" | tee "$D/eq_index.txt"
have_py=0
"$PY" -c 'import torchvision, PIL, numpy' 2>/dev/null && have_py=1
if [ $have_py = 1 ]; then
    "$PY" "$here/coco_loader.py" json "$J" | tee "$D/py_json.txt"
    eq_s=$(awk '/^parse_cpu_s/ {print $2}' "$D/eq_index.txt")
    py_s=$(awk '/^py_json_cpu_s/ {print $2}' "$D/py_json.txt")
    echo "index (CPU seconds): eq parse into the index ${eq_s} s vs Python json.load alone ${py_s} s:" \
        "$(awk -v a="$py_s" -v b="$eq_s" 'BEGIN {printf "%.2f", a / b}')x"
fi
[ -d "$D/coco" ] || "$CTL" dataset synth --coco "$D/coco" --classes 20 --train 200 --val 1 --min-side 480 --max-side 640 >/dev/null
taskset -c 0 "$BIN" pipeline "$D/coco" "$SECS" | tee "$D/eq_pipe.txt"
if [ $have_py = 1 ]; then
    taskset -c 0 "$PY" "$here/coco_loader.py" pipeline "$D/coco" "$SECS" | tee "$D/py_pipe.txt"
    a=$(awk '/^pipeline_img_per_cpu_s/ {print $2}' "$D/eq_pipe.txt")
    b=$(awk '/^py_pipeline_img_per_cpu_s/ {print $2}' "$D/py_pipe.txt")
    echo "pipeline (images per CPU second, one core): eq ${a} vs torchvision+PIL ${b}:" \
        "$(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}')x"
fi
