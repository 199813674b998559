#!/usr/bin/python3
"""PyTorch side of bench/train_step_gpu: one training step (forward in
training mode, cross-entropy, backward, SGD momentum 0.9 nesterov weight
decay 1e-4) of torchvision's resnet18 on the GPU, channels_last, eager, on
random data generated on the device.  Prints one line per mode:
    torch <mode> step_ms=<best> images/s=<from best>
modes: fp32 (PyTorch's defaults: cuDNN may use TF32) and amp_bf16
(torch.autocast bfloat16).  Best of --iters after --warmup steps, each step
timed between torch.cuda.synchronize() calls."""
import argparse
import sys
import time

try:
    import torch
    import torch.nn.functional as F
    import torchvision
except ImportError as e:  # the caller prints the table without torch rows
    print("torch unavailable: %s" % e, flush=True)
    sys.exit(3)

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=256)
ap.add_argument("--size", type=int, default=224)
ap.add_argument("--iters", type=int, default=5)
ap.add_argument("--warmup", type=int, default=2)
a = ap.parse_args()
if not torch.cuda.is_available():
    print("torch: no CUDA device", flush=True)
    sys.exit(3)
torch.manual_seed(0)
dev = torch.device("cuda")
torch.backends.cudnn.benchmark = True
x = torch.randn(a.batch, 3, a.size, a.size, device=dev).to(memory_format=torch.channels_last)
y = torch.randint(0, 1000, (a.batch,), device=dev)
for mode in ("fp32", "amp_bf16"):
    model = torchvision.models.resnet18(num_classes=1000).to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    times = []
    for it in range(a.warmup + a.iters):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=(mode == "amp_bf16")):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if it >= a.warmup:
            times.append(dt)
    best = min(times)
    print("torch %s step_ms=%.2f images/s=%.1f" % (mode, best * 1e3, a.batch / best), flush=True)
    del model, opt
    torch.cuda.empty_cache()
