#!/usr/bin/env python3
"""Generate a COCO-val-sized evaluation case for bench/coco_bench.

    coco_bench_gen.py OUTDIR [--images 5000] [--per-image 94] [--seed 1] [--segm]

Writes OUTDIR/gt.json (5000 images of 640x480-ish, ~35k annotations over 80
categories, 1% crowd) and OUTDIR/dt_bbox.json (~94 detections per image,
~470k in all: jittered copies of the GT boxes -- mostly the right category,
some the wrong one -- and random boxes, scores with 4 decimals so ties
occur).  With --segm every GT gets a 12-vertex polygon (an ellipse in its
box) and OUTDIR/dt_segm.json holds the same detections with polygon
segmentations (box-branch results, as loadRes accepts them).

Only the standard library is used; the output depends only on the seed.
"""
import argparse
import json
import math
import os
import random


def ellipse(x, y, w, h, n=12):
    cx, cy, rx, ry = x + w / 2, y + h / 2, w / 2, h / 2
    pts = []
    for i in range(n):
        a = 2 * math.pi * i / n
        pts += [round(cx + rx * math.cos(a), 2), round(cy + ry * math.sin(a), 2)]
    return [pts]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--per-image", type=int, default=94)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--segm", action="store_true")
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    os.makedirs(a.outdir, exist_ok=True)
    # COCO's category ids: 1..90 with gaps, 80 in all
    cats = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]
    weights = [1.0 / (k + 1) ** 0.8 for k in range(len(cats))]
    images, anns, dets, dets_segm = [], [], [], []
    aid = 1
    for i in range(a.images):
        img_id = 100000 + 7 * i
        W, H = rnd.choice([(640, 480), (480, 640), (640, 427), (500, 375), (640, 512)])
        images.append({"id": img_id, "width": W, "height": H, "file_name": "%012d.jpg" % img_id})
        gts = []
        for _ in range(max(0, int(rnd.expovariate(1 / 7.0)))):
            s = rnd.choice([rnd.uniform(4, 32), rnd.uniform(32, 96), rnd.uniform(96, 400)])
            w = min(W - 1, s * rnd.uniform(0.5, 2.0))
            h = min(H - 1, s * s / max(w, 1))
            h = min(h, H - 1)
            x, y = rnd.uniform(0, W - w), rnd.uniform(0, H - h)
            c = rnd.choices(cats, weights)[0]
            bb = [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]
            ann = {"id": aid, "image_id": img_id, "category_id": c, "bbox": bb,
                   "area": round(w * h * rnd.uniform(0.5, 0.9), 2),
                   "iscrowd": 1 if rnd.random() < 0.01 else 0}
            if a.segm:
                ann["segmentation"] = ellipse(*bb)
            anns.append(ann)
            gts.append(ann)
            aid += 1
        for k in range(a.per_image):
            if gts and rnd.random() < 0.6:
                g = rnd.choice(gts)
                x, y, w, h = g["bbox"]
                j = rnd.uniform(0, 0.35)
                w2, h2 = w * rnd.uniform(1 - j, 1 + j), h * rnd.uniform(1 - j, 1 + j)
                x2, y2 = x + w * rnd.uniform(-j, j) / 2, y + h * rnd.uniform(-j, j) / 2
                c = g["category_id"] if rnd.random() < 0.8 else rnd.choice(cats)
            else:
                w2, h2 = rnd.uniform(5, 300), rnd.uniform(5, 300)
                x2, y2 = rnd.uniform(0, W - 5), rnd.uniform(0, H - 5)
                c = rnd.choices(cats, weights)[0]
            bb = [round(x2, 2), round(y2, 2), round(w2, 2), round(h2, 2)]
            d = {"image_id": img_id, "category_id": c, "bbox": bb,
                 "score": round(rnd.betavariate(1.2, 3.0), 4)}
            dets.append(d)
            if a.segm:
                ds = dict(d)
                ds["segmentation"] = ellipse(*bb)
                dets_segm.append(ds)
    gt = {"info": {"description": "eq coco_bench synthetic case", "seed": a.seed},
          "images": images, "annotations": anns,
          "categories": [{"id": c, "name": "c%d" % c, "supercategory": "s"} for c in cats]}
    with open(os.path.join(a.outdir, "gt.json"), "w") as f:
        json.dump(gt, f)
    with open(os.path.join(a.outdir, "dt_bbox.json"), "w") as f:
        json.dump(dets, f)
    if a.segm:
        with open(os.path.join(a.outdir, "dt_segm.json"), "w") as f:
            json.dump(dets_segm, f)
    print("%d images, %d annotations, %d categories, %d detections" %
          (len(images), len(anns), len(cats), len(dets)))


if __name__ == "__main__":
    main()
