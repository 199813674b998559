#!/usr/bin/python3
"""PyTorch side of bench/train_step: times one training step (forward in
training mode, cross-entropy, backward, SGD momentum 0.9 nesterov weight
decay 1e-4) of the same network on the same batch, and prints one line per
memory format:
    torch <format> step_ms=<best> images/s=<from best> peak_rss_mb=<process peak>
(best of --iters after one warm-up step, as bench/train_step reports its own).
--input holds the batch as bench/train_step wrote it: float32 NHWC images,
then int32 labels.  --precision bf16 adds the step under
torch.autocast("cpu", dtype=torch.bfloat16) in each format, printed as
"torch <format>+bf16"; fp16 has no CPU autocast in PyTorch 1.13 (a note
is printed instead)."""
import argparse
import resource
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock

ap = argparse.ArgumentParser()
ap.add_argument("--model", required=True, choices=["resnet20", "resnet18"])
ap.add_argument("--batch", type=int, required=True)
ap.add_argument("--size", type=int, required=True)
ap.add_argument("--threads", type=int, required=True)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--input", required=True)
ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
a = ap.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


class ResNet20(nn.Module):
    """The original's resnet20 with origin,cbsa,fix_pooling,singleconv,fix,
    real_skip at width 16: torchvision BasicBlocks on a 3x3 stem."""

    def __init__(self, classes=10, w=16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers, inp = [], w
        for s in range(3):
            out = w << s
            for i in range(3):
                st = 2 if i == 0 and s > 0 else 1
                ds = None
                if st != 1 or inp != out:
                    ds = nn.Sequential(nn.Conv2d(inp, out, 1, st, bias=False), nn.BatchNorm2d(out))
                layers.append(BasicBlock(inp, out, st, ds))
                inp = out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inp, classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


n, s = a.batch, a.size
raw = np.fromfile(a.input, dtype=np.uint8)
x = torch.from_numpy(raw[: n * s * s * 3 * 4].view(np.float32).reshape(n, s, s, 3).copy())
y = torch.from_numpy(raw[n * s * s * 3 * 4:].view(np.int32).astype(np.int64))
x = x.permute(0, 3, 1, 2).contiguous()
runs = [(f, False) for f in ("nchw", "channels_last")]
if a.precision == "bf16":
    runs += [(f, True) for f in ("nchw", "channels_last")]
elif a.precision == "fp16":
    print("torch: no fp16 autocast on the CPU in PyTorch %s: no peer row" % torch.__version__, flush=True)
for fmt, amp in runs:
    mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    model = ResNet20() if a.model == "resnet20" else torchvision.models.resnet18(num_classes=1000)
    model = model.to(memory_format=mf).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    xf = x.to(memory_format=mf)
    times, cpus = [], []
    for it in range(a.iters + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(xf)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        if it > 0:  # the first step warms up
            times.append(dt)
            cpus.append(dc)
    best = min(times)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print("torch %s step_ms=%.1f images/s=%.1f peak_rss_mb=%.0f cpu_ms=%.1f"
          % (fmt + ("+bf16" if amp else ""), best * 1e3, n / best, rss, min(cpus) * 1e3), flush=True)
