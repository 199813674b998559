#!/usr/bin/python3
"""The peer of bench/loader.c (which runs it): what a PyTorch user's loader
worker does per image, on one core, with Debian's torchvision + PIL.

    /usr/bin/python3 bench/loader.py ROOT [--split train] [--size 224]
        [--seconds 3] [--json]

train: PIL open + convert('RGB') + RandomResizedCrop(size) +
       RandomHorizontalFlip, then np.asarray (uint8 HWC, eq's output: the
       float conversion is the trainer's job on both sides).
val:   Resize(size/0.875) + CenterCrop(size), same ending.
"""
import argparse
import json
import os
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
a = ap.parse_args()
torch.set_num_threads(1)
base = os.path.join(a.root, a.split)
files = []
for c in sorted(os.listdir(base)):
    d = os.path.join(base, c)
    for r, _, fs in sorted(os.walk(d)):
        files += [os.path.join(r, f) for f in sorted(fs)]


def run(tf):
    k = 0
    t0 = time.perf_counter()
    while True:
        for _ in range(16):
            with open(files[k % len(files)], "rb") as f:
                img = Image.open(f).convert("RGB")
            np.asarray(tf(img))
            k += 1
        t = time.perf_counter() - t0
        if t >= a.seconds:
            return k / t


train = run(T.Compose([T.RandomResizedCrop(a.size), T.RandomHorizontalFlip()]))
val = run(T.Compose([T.Resize(int(a.size / 0.875 + 0.5)), T.CenterCrop(a.size)]))
if a.json:
    print(json.dumps({"files": len(files), "tv_train": round(train, 1), "tv_val": round(val, 1)}))
else:
    print("torchvision %s + PIL %s, one thread, images/s:\n  tv-train %8.1f\n  tv-val   %8.1f"
          % (__import__("torchvision").__version__, Image.__version__, train, val))
