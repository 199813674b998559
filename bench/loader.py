#!/usr/bin/python3
"""The peer of bench/loader.c (which runs it): what a PyTorch user's loader
worker does per image, on one core, with Debian's torchvision + PIL.

    /usr/bin/python3 bench/loader.py ROOT [--split train] [--size 224]
        [--seconds 3] [--json]
    /usr/bin/python3 bench/loader.py ROOT --serve [--size 224]

train: PIL open + convert('RGB') + RandomResizedCrop(size) +
       RandomHorizontalFlip, then np.asarray (uint8 HWC, eq's output: the
       float conversion is the trainer's job on both sides).
val:   Resize(size/0.875) + CenterCrop(size), same ending.

Each run reports images, wall seconds and CPU seconds of this process
(time.process_time(): all its threads; torch is set to one thread), so
that images per CPU-second can be compared on a loaded machine.

--serve: read lines "train SECONDS" / "val SECONDS" from stdin and answer
each with one JSON line {"split", "n", "wall", "cpu"} (bench/loader.c
alternates its own pipelines with these runs, paying torch's import once).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("root")
ap.add_argument("--split", default="train")
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--seconds", type=float, default=3.0)
ap.add_argument("--json", action="store_true")
ap.add_argument("--serve", action="store_true")
a = ap.parse_args()
torch.set_num_threads(1)
base = os.path.join(a.root, a.split)
files = []
for c in sorted(os.listdir(base)):
    d = os.path.join(base, c)
    for r, _, fs in sorted(os.walk(d)):
        files += [os.path.join(r, f) for f in sorted(fs)]

TF = {
    "train": T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip()]),
    "val": T.Compose([T.Resize(int(a.size / 0.875 + 0.5)), T.CenterCrop(a.size)]),
}
pos = {"train": 0, "val": 0}


def run(split, seconds):
    """Images, wall s, CPU s of at least `seconds` of the split's pipeline."""
    tf = TF[split]
    k = pos[split]
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while True:
        for _ in range(16):
            with open(files[k % len(files)], "rb") as f:
                img = Image.open(f).convert("RGB")
            np.asarray(tf(img))
            k += 1
            n += 1
        t = time.perf_counter() - t0
        if t >= seconds:
            pos[split] = k
            return n, t, time.process_time() - c0


if a.serve:
    for line in sys.stdin:
        w = line.split()
        if len(w) != 2 or w[0] not in TF:
            print(json.dumps({"error": "bad request %r" % line}), flush=True)
            continue
        n, wall, cpu = run(w[0], float(w[1]))
        print(json.dumps({"split": w[0], "n": n, "wall": wall, "cpu": cpu}), flush=True)
    sys.exit(0)

res = {s: run(s, a.seconds) for s in ("train", "val")}
if a.json:
    out = {"files": len(files)}
    for s, (n, wall, cpu) in res.items():
        out["tv_" + s] = round(n / wall, 1)
        out["tv_" + s + "_cpu"] = round(n / cpu, 1)
    print(json.dumps(out))
else:
    print("torchvision %s + PIL %s, one thread, images/s (wall, per CPU-second):"
          % (__import__("torchvision").__version__, Image.__version__))
    for s, (n, wall, cpu) in res.items():
        print("  tv-%-6s %8.1f %8.1f" % (s, n / wall, n / cpu))
