#!/usr/bin/env python3
"""fuzz/coco_seeds.py -- writes fuzz/seeds/fuzz_coco/{segm-rle-multipoly,segm-from-bbox,kps-invisible}.bin:
inputs that reach what the first seeds did not (segm evaluation of RLE counts and strings,
multi-polygon merges, boxes as polygons, OKS of a GT without visible keypoints).
Byte 0 picks the iou type (0 bbox, 1 segm, 2 keypoints); then GT JSON, NUL, results JSON
(see fuzz/fuzz_coco.c).  Run from the source root; plain Python 3, no packages."""
import json
D = "fuzz/seeds/fuzz_coco/"
def enc(cnts):
    s=''
    for i,c in enumerate(cnts):
        x=c
        if i>2: x-=cnts[i-2]
        more=1
        while more:
            ch=x&0x1f; x>>=5
            more=(x!=-1) if (ch&0x10) else (x!=0)
            if more: ch|=0x20
            s+=chr(ch+48)
    return s
def box_rle(h,w,x0,y0,x1,y1):
    # column-major mask of rectangle [x0,x1)x[y0,y1)
    m=[0]*(h*w)
    for x in range(x0,x1):
        for y in range(y0,y1): m[x*h+y]=1
    cnts=[];p=0;c=0
    for v in m:
        if v!=p: cnts.append(c);c=0;p=v
        c+=1
    cnts.append(c); return cnts
gt={"images":[{"id":1,"height":20,"width":30},{"id":2,"height":10,"width":10}],
 "categories":[{"id":1},{"id":2}],
 "annotations":[
  {"id":1,"image_id":1,"category_id":1,"area":100,"iscrowd":0,"bbox":[2,2,10,8],"segmentation":[[2,2,12,2,12,10,2,10],[20,5,25,5,22,15]]},
  {"id":2,"image_id":1,"category_id":1,"area":50,"iscrowd":1,"bbox":[0,0,5,5],"segmentation":{"size":[20,30],"counts":box_rle(20,30,0,0,5,5)}},
  {"id":3,"image_id":2,"category_id":2,"area":16,"iscrowd":0,"bbox":[1,1,4,4],"segmentation":{"size":[10,10],"counts":enc(box_rle(10,10,1,1,5,5))}}]}
dt=[{"image_id":1,"category_id":1,"score":0.9,"segmentation":{"size":[20,30],"counts":enc(box_rle(20,30,2,2,12,10))}},
    {"image_id":1,"category_id":1,"score":0.5,"segmentation":{"size":[20,30],"counts":enc(box_rle(20,30,0,0,4,6))}},
    {"image_id":2,"category_id":2,"score":0.7,"segmentation":{"size":[10,10],"counts":enc(box_rle(10,10,2,1,6,5))}}]
j=lambda o: json.dumps(o,separators=(',',':')).encode()
open(D + 'segm-rle-multipoly.bin','wb').write(b'\x01'+j(gt)+b'\x00'+j(dt))
# bbox results against the same GT, evaluated as segm (boxes become polygons)
dtb=[{"image_id":1,"category_id":1,"score":0.9,"bbox":[2,2,10,8]},{"image_id":2,"category_id":2,"score":0.4,"bbox":[1,1,3,5]}]
open(D + 'segm-from-bbox.bin','wb').write(b'\x01'+j(gt)+b'\x00'+j(dtb))
# keypoints: one GT with no visible keypoints (OKS against the box)
kp=[0]*51
kp2=[]
for k in range(17): kp2+= [3+k%5,4+k%7,2]
gtk={"images":[{"id":1,"height":40,"width":40}],"categories":[{"id":1}],
 "annotations":[{"id":1,"image_id":1,"category_id":1,"area":200,"iscrowd":0,"bbox":[2,2,20,10],"num_keypoints":0,"keypoints":kp},
                {"id":2,"image_id":1,"category_id":1,"area":300,"iscrowd":0,"bbox":[1,1,20,20],"num_keypoints":17,"keypoints":kp2}]}
dtk=[{"image_id":1,"category_id":1,"score":0.8,"keypoints":kp2},{"image_id":1,"category_id":1,"score":0.3,"keypoints":[5]*51}]
open(D + 'kps-invisible.bin','wb').write(b'\x02'+j(gtk)+b'\x00'+j(dtk))
