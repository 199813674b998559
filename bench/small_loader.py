#!/usr/bin/python3
"""The peer of bench/small_loader.c (which runs it): what
torchvision.datasets.CIFAR10 / FashionMNIST.__getitem__ does per sample
with the usual training transforms, on one core.

    /usr/bin/python3 bench/small_loader.py --set cifar --cifar FILE.bin --seconds S
    /usr/bin/python3 bench/small_loader.py --set fmnist --images IDX.gz --labels IDX.gz --seconds S

The stored arrays are laid out as torchvision keeps them (CIFAR: uint8
[N, 32, 32, 3] from the binary batch's planar records, transposed as
torchvision's CIFAR10 does; Fashion-MNIST: a uint8 tensor [N, 28, 28]).
Per sample: Image.fromarray (mode "L" for Fashion-MNIST, as torchvision),
RandomCrop(size, padding=4 or 2), RandomHorizontalFlip(), then
  uint8:   np.asarray (uint8 HWC, what eq's loader delivers)
  tensor:  ToTensor() + Normalize(mean, std) (the usual ending; the float
           conversion eq does in the trainer, see bench/stage)
each for --seconds, printing "tv ENDING n=N wall=W cpu=C" (cpu:
time.process_time(), torch set to one thread).
"""
import argparse
import gzip
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("--set", required=True, choices=("cifar", "fmnist"))
ap.add_argument("--cifar")
ap.add_argument("--images")
ap.add_argument("--labels")
ap.add_argument("--seconds", type=float, default=2.0)
a = ap.parse_args()
torch.set_num_threads(1)

if a.set == "cifar":
    raw = np.fromfile(a.cifar, dtype=np.uint8).reshape(-1, 3073)
    targets = raw[:, 0].astype(np.int64).tolist()
    data = raw[:, 1:].reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # as torchvision's CIFAR10
    size, pad, mode = 32, 4, None
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
else:
    with gzip.open(a.images, "rb") as f:
        b = f.read()
    data = torch.from_numpy(np.frombuffer(b, dtype=np.uint8, offset=16).reshape(-1, 28, 28).copy())
    with gzip.open(a.labels, "rb") as f:
        targets = torch.from_numpy(np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64))
    size, pad, mode = 28, 2, "L"
    mean, std = (0.2860,), (0.3530,)

aug = [T.RandomCrop(size, padding=pad), T.RandomHorizontalFlip()]
endings = [("uint8", T.Compose(aug + [np.asarray])),
           ("tensor", T.Compose(aug + [T.ToTensor(), T.Normalize(mean, std)]))]
n_all = len(data)


def getitem(i, tf):
    # torchvision.datasets.CIFAR10 / FashionMNIST.__getitem__
    img, target = data[i], int(targets[i])
    img = Image.fromarray(img) if mode is None else Image.fromarray(img.numpy(), mode=mode)
    return tf(img), target


for name, tf in endings:
    getitem(0, tf)  # warm-up
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    t = t0
    while t - t0 < a.seconds:
        for _ in range(64):
            getitem(n % n_all, tf)
            n += 1
        t = time.perf_counter()
    c = time.process_time() - c0
    print("tv %s n=%d wall=%.4f cpu=%.4f" % (name, n, t - t0, c), flush=True)
