#!/usr/bin/python3
"""The peer of bench/stage.c (which runs it): a uint8 NHWC batch to the
normalised fp32 network input, plain and with mixup, the ways a PyTorch
user writes it, on the CPU with torch.set_num_threads(--threads).

    /usr/bin/python3 bench/stage.py --serve --dir DIR --shape N,H,W,C \\
        --mean M0,M1,M2 --std S0,S1,S2 --threads T --lam L

Formulations (x: the uint8 [N,H,W,C] batch as a tensor; mean/std shaped
for the layout; mixup: lam * y + (1 - lam) * y[perm], the original's
mixup_data, one lambda per batch):
  permute     x.permute(0,3,1,2).float().div(255).sub(mean).div(std)
  normalize   torchvision.transforms.Normalize(mean, std) on
              x.permute(0,3,1,2).float().div(255)
  nhwc        x.float().div(255).sub(mean).div(std), channels last
  prealloc    a careful user's: buf.copy_(x) into a buffer allocated once,
              then buf.mul_(1/(255 std)).add_(-mean/std) in place (eq's
              formula); mixup into a second buffer through index_select(out=)
              and in-place mul_/add_
(permute / normalize give an NCHW tensor in channels_last memory, the same
bytes as the others'.)

Reads DIR/src.u8 and DIR/perm.i32 (int32), and eq's outputs DIR/eq_plain.f32
and DIR/eq_mixup.f32 for the check.  Commands on stdin, answers on stdout:
  check     one line per formulation and mode:
            "check NAME plain|mixup maxdiff=D" (max |torch - eq| over the
            whole batch), then "done"
  time K    each formulation and mode K times after one warm-up call:
            "torch NAME plain|mixup wall_ms=BEST cpu_ms=BEST" (cpu: process
            CPU time, all threads), then "done"
"""
import argparse
import os
import sys
import time

import numpy as np
import torch
import torchvision.transforms as T

ap = argparse.ArgumentParser()
ap.add_argument("--serve", action="store_true", required=True)
ap.add_argument("--dir", required=True)
ap.add_argument("--shape", required=True, help="N,H,W,C")
ap.add_argument("--mean", required=True)
ap.add_argument("--std", required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--lam", type=float, required=True)
a = ap.parse_args()
n, h, w, c = (int(v) for v in a.shape.split(","))
mean = [float(v) for v in a.mean.split(",")]
std = [float(v) for v in a.std.split(",")]
lam = a.lam
torch.set_num_threads(a.threads)

x = torch.from_numpy(np.fromfile(os.path.join(a.dir, "src.u8"), dtype=np.uint8).reshape(n, h, w, c))
perm = torch.from_numpy(np.fromfile(os.path.join(a.dir, "perm.i32"), dtype=np.int32).astype(np.int64))
eq_out = {}
for m in ("plain", "mixup"):
    eq_out[m] = torch.from_numpy(np.fromfile(os.path.join(a.dir, "eq_%s.f32" % m), dtype=np.float32).reshape(n, h, w, c))

mean4 = torch.tensor(mean).view(1, c, 1, 1)
std4 = torch.tensor(std).view(1, c, 1, 1)
mean_l = torch.tensor(mean)  # broadcasts over the last (channel) dim
std_l = torch.tensor(std)
sc_l = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float64))).float()
sh_l = (-torch.tensor(mean, dtype=torch.float64) / torch.tensor(std, dtype=torch.float64)).float()
norm = T.Normalize(mean, std)
buf = torch.empty(n, h, w, c)
buf2 = torch.empty(n, h, w, c)


def f_permute(x):
    return x.permute(0, 3, 1, 2).float().div(255).sub(mean4).div(std4)


def f_normalize(x):
    return norm(x.permute(0, 3, 1, 2).float().div(255))


def f_nhwc(x):
    return x.float().div(255).sub(mean_l).div(std_l)


def f_prealloc(x):
    buf.copy_(x)
    return buf.mul_(sc_l).add_(sh_l)


def mix(y):
    return lam * y + (1 - lam) * y[perm]


def mix_prealloc(y):
    torch.index_select(y, 0, perm, out=buf2)
    return buf2.mul_(1 - lam).add_(y.mul_(lam))


# name, conversion, mixup, whether the result is indexed N,C,H,W
FORMS = [("permute", f_permute, mix, True), ("normalize", f_normalize, mix, True),
         ("nhwc", f_nhwc, mix, False), ("prealloc", f_prealloc, mix_prealloc, False)]


def run(f, mx, mode):
    y = f(x)
    if mode == "mixup":
        y = mx(y)
    return y


def check():
    for name, f, mx, nchw in FORMS:
        for mode in ("plain", "mixup"):
            with torch.no_grad():
                y = run(f, mx, mode)
                if nchw:
                    y = y.permute(0, 2, 3, 1)
                d = (y - eq_out[mode]).abs().max().item()
            print("check %s %s maxdiff=%.6g" % (name, mode, d), flush=True)


def timing(k):
    for name, f, mx, _ in FORMS:
        for mode in ("plain", "mixup"):
            best_w = best_c = None
            with torch.no_grad():
                for it in range(k + 1):
                    c0, t0 = time.process_time(), time.perf_counter()
                    y = run(f, mx, mode)
                    t1, c1 = time.perf_counter(), time.process_time()
                    del y
                    if it == 0:
                        continue  # warm-up
                    ww, cc = (t1 - t0) * 1e3, (c1 - c0) * 1e3
                    best_w = ww if best_w is None else min(best_w, ww)
                    best_c = cc if best_c is None else min(best_c, cc)
            print("torch %s %s wall_ms=%.3f cpu_ms=%.3f" % (name, mode, best_w, best_c), flush=True)


for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    if cmd[0] == "check":
        check()
    elif cmd[0] == "time":
        timing(int(cmd[1]))
    else:
        print("unknown command %r" % line, file=sys.stderr)
        sys.exit(2)
    print("done", flush=True)
