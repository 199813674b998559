#!/usr/bin/python3
"""The peer of bench/allreduce.c (which runs it): torch.distributed's gloo
all-reduce between two processes on this machine, as
DistributedDataParallel averages gradients: per bucket div_(world) then
all_reduce(SUM, async_op=True), all buckets started, then all waited.

    /usr/bin/python3 bench/allreduce.py --iters N --case NAME:SCHED:B1+B2+...

Without --rank it starts the two ranks itself (GLOO_SOCKET_IFNAME=lo,
tcp:// rendezvous on a free loopback port, one intra-op thread each as
torchrun sets OMP_NUM_THREADS=1) and passes rank 0's output through.
Per case, rank 0 prints
    check torch NAME:SCHED maxdiff=D    (first all-reduce of known values
                                         against their average)
    torch NAME:SCHED wall_ms=BEST cpu_ms=BEST
over the --iters all-reduces after the check (wall: one all-reduce of
all the buckets on rank 0; cpu: rank 0's process CPU time, all threads).
Rank r's element i is ((i * 2654435761 + r * 97) % 2001 - 1000) / 1000,
as in bench/allreduce.c.
"""
import argparse
import os
import socket
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=10)
ap.add_argument("--case", action="append", required=True)
ap.add_argument("--rank", type=int)
ap.add_argument("--port", type=int)
a = ap.parse_args()
WORLD = 2

if a.rank is None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    args = [sys.executable, os.path.abspath(__file__), "--iters", str(a.iters), "--port", str(port)]
    for c in a.case:
        args += ["--case", c]
    procs = [subprocess.Popen(args + ["--rank", str(r)], env=env,
                              stdout=None if r == 0 else subprocess.DEVNULL) for r in range(WORLD)]
    rc = [p.wait() for p in procs]
    sys.exit(0 if rc == [0] * WORLD else 1)

import numpy as np
import torch
import torch.distributed as dist

torch.set_num_threads(1)
dist.init_process_group("gloo", init_method="tcp://127.0.0.1:%d" % a.port, rank=a.rank, world_size=WORLD)


def val(r, n):
    i = np.arange(n, dtype=np.uint64)
    return (((i * np.uint64(2654435761) + np.uint64(r * 97)) % np.uint64(2001)).astype(np.int64) - 1000).astype(np.float32) / np.float32(1000.0)


def reduce_all(bufs):
    works = []
    for b in bufs:
        b.div_(WORLD)
        works.append(dist.all_reduce(b, op=dist.ReduceOp.SUM, async_op=True))
    for w in works:
        w.wait()


for case in a.case:
    name, sched, sizes = case.split(":")
    sizes = [int(v) for v in sizes.split("+")]
    n = sum(sizes)
    mine = torch.from_numpy(val(a.rank, n))
    want = (val(0, n).astype(np.float64) + val(1, n).astype(np.float64)) / 2
    bufs = list(torch.split(mine, sizes))  # views: the buckets of one gradient
    reduce_all(bufs)
    if a.rank == 0:
        d = float(np.abs(mine.numpy().astype(np.float64) - want).max())
        print("check torch %s:%s maxdiff=%.6g" % (name, sched, d), flush=True)
    best_w = best_c = None
    for it in range(a.iters):
        c0, t0 = time.process_time(), time.perf_counter()
        reduce_all(bufs)
        t1, c1 = time.perf_counter(), time.process_time()
        ww, cc = (t1 - t0) * 1e3, (c1 - c0) * 1e3
        best_w = ww if best_w is None else min(best_w, ww)
        best_c = cc if best_c is None else min(best_c, cc)
    if a.rank == 0:
        print("torch %s:%s wall_ms=%.3f cpu_ms=%.3f" % (name, sched, best_w, best_c), flush=True)
dist.destroy_process_group()
