#!/usr/bin/python3
"""bench/coco_loader.py -- the Python side of bench/coco_loader.sh.

  coco_loader.py json FILE          json.load of an instances file: seconds, peak RSS
  coco_loader.py pipeline ROOT S    images/s, one thread, of the equivalent of eq's
                                    COCO train pipeline written with torchvision + PIL:
                                    PIL decode, detectron2's shorter side (640..800) /
                                    longer side <= 1333 with PIL bilinear (antialiased,
                                    like torchvision's Resize on PIL images), horizontal
                                    flip of image, boxes and polygons, masks drawn at the
                                    output size (PIL ImageDraw; pycocotools is not
                                    installed here) and cut to their boxes.
Output: "key value" lines.
"""
import json
import math
import os
import random
import resource
import sys
import time


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def bench_json(path):
    c0, t0 = cpu(), time.perf_counter()
    with open(path, "rb") as f:
        d = json.load(f)
    t1, c1 = time.perf_counter(), cpu()
    print("py_images", len(d["images"]))
    print("py_annotations", len(d.get("annotations", [])))
    print("py_json_s %.3f" % (t1 - t0))
    print("py_json_cpu_s %.3f" % (c1 - c0))
    print("py_json_peak_rss_mb", peak_mb())


def bench_pipeline(root, secs):
    import numpy as np
    import torch
    import torchvision.transforms.functional as F
    from PIL import Image, ImageDraw

    torch.set_num_threads(1)
    with open(os.path.join(root, "annotations", "instances_train2017.json")) as f:
        d = json.load(f)
    anns = {}
    for a in d["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    imgs = sorted((i for i in d["images"] if any(not a["iscrowd"] for a in anns.get(i["id"], []))),
                  key=lambda i: i["id"])
    rng = random.Random(0)
    n = boxes = 0
    c0, t0 = cpu(), time.perf_counter()
    while True:
        info = imgs[n % len(imgs)]
        img = Image.open(os.path.join(root, "train2017", info["file_name"])).convert("RGB")
        w, h = img.size
        s = rng.choice([640, 672, 704, 736, 768, 800])
        scale = s / min(h, w)
        nh, nw = (s, scale * w) if h < w else (scale * h, s)
        if max(nh, nw) > 1333:
            r = 1333 / max(nh, nw)
            nh, nw = nh * r, nw * r
        nw, nh = int(nw + 0.5), int(nh + 0.5)
        img = F.resize(img, [nh, nw])
        flip = rng.random() < 0.5
        if flip:
            img = F.hflip(img)
        t = F.pil_to_tensor(img)
        sx, sy = nw / w, nh / h
        out = []
        for a in anns.get(info["id"], []):
            x, y, bw, bh = a["bbox"]
            x0, x1, y0, y1 = x * sx, (x + bw) * sx, y * sy, (y + bh) * sy
            if flip:
                x0, x1 = nw - x1, nw - x0
            x0, x1 = min(max(x0, 0), nw), min(max(x1, 0), nw)
            y0, y1 = min(max(y0, 0), nh), min(max(y1, 0), nh)
            if x1 - x0 <= 0 or y1 - y0 <= 0:
                continue
            seg = a.get("segmentation")
            m = Image.new("L", (nw, nh), 0)
            if isinstance(seg, list):
                dr = ImageDraw.Draw(m)
                for ring in seg:
                    pts = [((nw - ring[i] * sx) if flip else ring[i] * sx, ring[i + 1] * sy)
                           for i in range(0, len(ring), 2)]
                    dr.polygon(pts, fill=1)
            mk = np.asarray(m)[int(y0):int(math.ceil(y1)), int(x0):int(math.ceil(x1))]
            out.append((torch.tensor([x0, y0, x1, y1]), a["category_id"], torch.from_numpy(mk.copy())))
        boxes += len(out)
        n += 1
        if n % 8 == 0 and time.perf_counter() - t0 >= secs:
            break
    dt, dc = time.perf_counter() - t0, cpu() - c0
    print("py_pipeline_images", n)
    print("py_pipeline_boxes", boxes)
    print("py_pipeline_img_s %.2f" % (n / dt))
    print("py_pipeline_img_per_cpu_s %.2f" % (n / dc))
    del t


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "json":
        bench_json(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "pipeline":
        bench_pipeline(sys.argv[2], float(sys.argv[3]))
    else:
        sys.exit(__doc__)
