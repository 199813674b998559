#!/usr/bin/python3
"""The peer of bench/ckpt.c (which runs it): torch.save / torch.load of the
training state eq's checkpoint holds (torchvision's resnet18 and SGD
momentum buffers), one thread.

    /usr/bin/python3 bench/ckpt.py --eq FILE.safetensors --dir DIR --iters N

Reads eq's file with its own parser (8-byte little-endian header length,
JSON header of {name: {dtype, shape, data_offsets}}, raw data), loads the
model tensors into torchvision.models.resnet18() with
load_state_dict(strict=True) and each "optim.<name>.momentum_buffer" into
torch.optim.SGD's state, then (best of --iters after one warm-up each)
  save         torch.save({"model", "optimizer"} state dicts) to DIR
  save_atomic  the same to a temporary file, flush, os.fsync, os.replace,
               fsync of DIR (eq's guarantee)
  load         torch.load + model.load_state_dict + optimizer.load_state_dict
Prints "check ..." lines (ok / FAIL), then
"torch save|save_atomic|load wall_ms=BEST cpu_ms=BEST".
"""
import argparse
import json
import os
import struct
import time

import numpy as np
import torch
import torchvision

ap = argparse.ArgumentParser()
ap.add_argument("--eq", required=True)
ap.add_argument("--dir", required=True)
ap.add_argument("--iters", type=int, default=3)
a = ap.parse_args()
torch.set_num_threads(1)

DT = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
with open(a.eq, "rb") as f:
    raw = f.read()
hlen = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + hlen])
base = 8 + hlen
tensors = {}
for name, d in header.items():
    if name == "__metadata__":
        continue
    lo, hi = d["data_offsets"]
    arr = np.frombuffer(raw, dtype=DT[d["dtype"]], count=(hi - lo) // np.dtype(DT[d["dtype"]]).itemsize,
                        offset=base + lo).reshape(d["shape"])
    tensors[name] = torch.from_numpy(arr.copy())

model = torchvision.models.resnet18()
sd = {k: v for k, v in tensors.items() if not k.startswith("optim.") and not k.startswith("quant.")}
try:
    model.load_state_dict(sd, strict=True)
    print("check torch: load_state_dict(strict=True) of eq's %d model tensors: ok" % len(sd), flush=True)
except RuntimeError as e:
    print("check torch: load_state_dict(strict=True) of eq's model tensors: FAIL (%s)" % str(e).replace("\n", " "),
          flush=True)
    raise SystemExit(1)
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
nbuf = 0
for name, p in model.named_parameters():
    key = "optim.%s.momentum_buffer" % name
    if key in tensors:
        opt.state[p]["momentum_buffer"] = tensors[key].clone()
        nbuf += 1
state = {"model": model.state_dict(), "optimizer": opt.state_dict()}
path = os.path.join(a.dir, "torch.pt")
tmp = path + ".tmp"


def save():
    torch.save(state, path)


def save_atomic():
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(a.dir, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def load():
    ck = torch.load(path)
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    return ck


save()
ck = load()
same = all(torch.equal(ck["model"][k], v) for k, v in model.state_dict().items() if k in sd) and \
    all(torch.equal(model.state_dict()[k], tensors[k]) for k in sd)
bufs = [opt.state[p]["momentum_buffer"] for p in model.parameters() if "momentum_buffer" in opt.state[p]]
same = same and len(bufs) == nbuf and nbuf > 0
print("check torch: torch.load gives eq's %d model tensors and %d momentum buffers bitwise: %s"
      % (len(sd), nbuf, "ok" if same else "FAIL"), flush=True)
print("torch file: %.1f MB" % (os.path.getsize(path) / 1e6), flush=True)
for name, fn in (("save", save), ("save_atomic", save_atomic), ("load", load)):
    bw = bc = None
    for it in range(a.iters + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        t1, c1 = time.perf_counter(), time.process_time()
        if it == 0:
            continue
        bw = (t1 - t0) * 1e3 if bw is None else min(bw, (t1 - t0) * 1e3)
        bc = (c1 - c0) * 1e3 if bc is None else min(bc, (c1 - c0) * 1e3)
    print("torch %s wall_ms=%.3f cpu_ms=%.3f" % (name, bw, bc), flush=True)
os.unlink(path)
