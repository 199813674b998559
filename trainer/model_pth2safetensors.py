#!/usr/bin/python3
"""Convert a PyTorch state dict (.pth / .pt) to safetensors for eq.

    /usr/bin/python3 trainer/model_pth2safetensors.py IN.pth OUT.safetensors

Accepts a bare state dict, or a checkpoint dict holding one under
"state_dict" or "model" (as the original's checkpoints and torchvision's
published weights are).  A leading "module." (DataParallel) is removed.
Float tensors are written as F32, integer ones (num_batches_tracked) as I64,
under their PyTorch names, which are the names eq's models use
(doc/models.md), so the result loads with eq_checkpoint_load_tensors
(`--pretrained`).  Needs torch; the `safetensors` package is not needed.
"""
import json
import struct
import sys

import torch


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    obj = torch.load(argv[1], map_location="cpu")
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict):
        sys.stderr.write("%s: not a state dict\n" % argv[1])
        return 1
    header, blobs, off = {}, [], 0
    for name, t in obj.items():
        if not torch.is_tensor(t):
            continue
        if name.startswith("module."):
            name = name[len("module."):]
        t = t.detach().cpu().contiguous()
        if t.is_floating_point():
            t, dt = t.float(), "F32"
        else:
            t, dt = t.long(), "I64"
        b = t.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"source": argv[1]}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(argv[2], "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    print("%s: %d tensors" % (argv[2], len(header) - 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
