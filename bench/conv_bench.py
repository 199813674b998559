#!/usr/bin/python3
"""PyTorch side of bench/conv_bench: times one conv layer forward + backward
(grad input and grad weight) on the CPU and prints one line per memory
format:  torch <format> fwd_ms=<best> bwd_ms=<best> total_ms=<best> cpu_ms=<best>
(best of --iters after one warm-up, as bench/conv_bench reports its own;
cpu_ms is the process CPU time of forward + backward, all threads, which
includes OpenMP's spin-waiting)
Called by bench/conv_bench with the same shape and thread count."""
import argparse
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--shape", required=True, help="n,h,w,c,k,r,s,stride,pad")
a = ap.parse_args()
n, h, w, c, k, r, s, st, pad = (int(v) for v in a.shape.split(","))
torch.set_num_threads(a.threads)
torch.manual_seed(0)

for fmt in ("nchw", "channels_last"):
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w).to(memory_format=mf).requires_grad_(True)
    wt = (torch.randn(k, c, r, s) * 0.05).to(memory_format=mf).requires_grad_(True)
    with torch.no_grad():
        y0 = F.conv2d(x, wt, stride=st, padding=pad)
    dy = torch.randn_like(y0).to(memory_format=mf)
    fw, bw, cpu = [], [], []
    for it in range(a.iters + 1):
        x.grad = None
        wt.grad = None
        c0, t0 = time.process_time(), time.perf_counter()
        y = F.conv2d(x, wt, stride=st, padding=pad)
        t1 = time.perf_counter()
        y.backward(dy)
        t2, c2 = time.perf_counter(), time.process_time()
        if it > 0:  # the first iteration warms up
            fw.append((t1 - t0) * 1e3)
            bw.append((t2 - t1) * 1e3)
            cpu.append((c2 - c0) * 1e3)
    tot = [f + b for f, b in zip(fw, bw)]
    print("torch %s fwd_ms=%.3f bwd_ms=%.3f total_ms=%.3f cpu_ms=%.3f" % (
        fmt, min(fw), min(bw), min(tot), min(cpu)), flush=True)
