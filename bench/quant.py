#!/usr/bin/python3
"""PyTorch side of bench/quant: the original's quantizers as it writes them
(../shared/ORIGINAL.md §2: round with a straight-through autograd Function,
GradientScale as v*f + (v - v*f).detach(), autograd for the rest), timed
forward + backward on the CPU with the shapes and options bench/quant
passes, one case per --case argument:

    --case "fm method=lsq bit=2" --case "wt method=dorefa bit=2" ...

Weights are OIHW (512,512,3,3) and activations NCHW (32,64,56,56) unless
--wt/--fm give other shapes.  For each case it prints one line
    torch <index> ms=<best fwd+bwd> fwd_ms=<best> bwd_ms=<best>
or  torch <index> unsupported <reason>
Times are the best of --reps after one warm-up, in CPU time of the process
with --threads 1 (as bench/quant measures its own), wall time otherwise.
lsq-step is LSQ as its paper defines it (the original lacks it): the
common PyTorch implementation with grad_scale and round_pass.
"""
import argparse
import math
import time

import torch

torch.set_default_dtype(torch.float32)


class RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v):
        return torch.round(v)

    @staticmethod
    def backward(ctx, g):
        return g


def grad_scale(v, f):
    if int(f) == 1:  # the original's quirk (§2.3)
        return v
    return v * f + (v - v * f).detach()


def clamp_ws(v, lo, hi, ste_scale):
    if not ste_scale:
        return torch.clamp(v, lo, hi)
    p = int(((v >= lo) & (v <= hi)).sum())
    if p == 0:
        return torch.clamp(v, lo, hi)
    return grad_scale(torch.clamp(v, lo, hi), math.sqrt(v.numel() / p))


def var_mean(w, g):
    v = w.reshape(g, -1)
    d = v.detach()
    return ((v - d.mean(1, keepdim=True)) / d.std(1, keepdim=True)).reshape(w.shape)


def levels(o):
    lv = int(o.get("level", 0))
    return lv if lv > 0 else int(2 ** float(o.get("bit", 32)))


def groups(tag, shape, o):
    P = shape[0] * shape[1] if tag == "wt" else shape[1]
    q = int(o.get("quant_group", 0))
    g = 0
    if q < 0 and P % (-q) == 0:
        g = P // (-q)
    elif q > 0 and P % q == 0:
        g = q
    return g if g else (shape[0] if tag == "wt" else 1)


def pshape(tag, g):
    return (g, 1, 1, 1) if tag == "wt" else ((1,) if g == 1 else (1, g, 1, 1))


def make(tag, o, shape):
    """Returns (fn(x) -> y, list of parameters) or raises ValueError."""
    m = o.get("method", "dorefa")
    L = levels(o)
    n = L - 1
    g = groups(tag, shape, o)
    boolean = lambda k, d: str(o.get(k, d)).lower() in ("1", "true", "yes", "on")
    half = tag != "wt" and boolean("half_range", tag == "fm")
    ss = o.get("grad_type", "none") == "STE-scale"
    vm = tag == "wt" and o.get("adaptive", "none") == "var-mean"
    pre = (lambda x: var_mean(x, g)) if vm else (lambda x: x)
    if m == "dorefa":
        c = float(o.get("boundary", 1.0))
        s = n / c
        if tag != "wt":
            return (lambda x: RoundSTE.apply(torch.clamp(x, 0, c) * s) / s), []

        def f(x):
            t = torch.tanh(pre(x))
            mx = torch.max(torch.abs(t))
            return 2 * (RoundSTE.apply((t / (2 * mx) + 0.5) * s) / s) - 1
        return f, []
    if m == "bin":
        def f(x):
            e = x.detach().abs().mean()
            sgn = torch.where(x.detach() < 0, -torch.ones_like(x), torch.ones_like(x))
            return e * sgn + (x - x.detach())
        return f, []
    if m == "pact":
        a = torch.nn.Parameter(torch.full((1,), float(o.get("boundary", 1.0))))

        def f(x):
            z = torch.relu(x)
            z = torch.where(z < a, z, a)
            s = n / a.detach()
            return RoundSTE.apply(z * s) / s
        return f, [a]
    if m == "lsq":
        if o.get("grad_scale", "none") != "none":
            raise ValueError("grad_scale")
        clip = torch.nn.Parameter(torch.full(pshape(tag, g), float(o.get("boundary", 1.0))))

        def f(x):
            x = pre(x)
            c = grad_scale(clip.abs(), 1.0)
            xv = x.reshape(g, -1) if tag == "wt" else x
            cv = c.reshape(g, 1) if tag == "wt" else c
            r = xv / cv
            if half:
                y = cv * (RoundSTE.apply(clamp_ws(r, 0, 1, ss) * n) / n)
            else:
                u = (clamp_ws(r, -1, 1, ss) + 1) / 2
                y = cv * (2 * (RoundSTE.apply(u * n) / n) - 1)
            return y.reshape(x.shape)
        return f, [clip]
    if m == "lsq-step":
        qn, qp = (0, L - 1) if boolean("half_range", tag == "fm") else (-(L // 2), L - 1 - L // 2)
        step = torch.nn.Parameter(torch.full(pshape(tag, g), 0.05))

        def f(x):
            x = pre(x)
            npg = x.numel() // g if tag == "wt" else x[0].numel() // g
            gs = 1.0 / math.sqrt(npg * qp)
            s = step * gs + (step - step * gs).detach()  # the paper's grad_scale
            xv = x.reshape(g, -1) if tag == "wt" else x
            sv = s.reshape(g, 1) if tag == "wt" else s
            return (RoundSTE.apply(torch.clamp(xv / sv, qn, qp)) * sv).reshape(x.shape)
        return f, [step]
    if m == "xnor":
        gt = o.get("grad_type", "none")
        if tag == "wt":
            def f(x):
                xd = x.detach()
                e = xd.reshape(g, -1).abs().mean(1).reshape(g, 1, 1, 1)
                yv = e * torch.where(xd < 0, -torch.ones_like(xd), torch.ones_like(xd))
                if gt == "STE":
                    mask = ((x > -1) & (x < 1)).float()
                    return yv + (x * mask - (x * mask).detach())
                return yv + (x - x.detach())
            return f, []
        if o.get("custom", "none") != "none":
            raise ValueError("custom")

        def f(x):
            xd = x.detach()
            yv = torch.where(xd < 0, -torch.ones_like(xd), torch.ones_like(xd))
            inside = ((xd > -1) & (xd < 1)).float()
            mk = inside if gt == "STE" else ((2 - 2 * xd.abs()) * inside if gt == "Triangle"
                                            else torch.ones_like(xd))
            return yv + (x * mk - (x * mk).detach())
        return f, []
    if m == "nonuniform":
        full = tag == "wt" or not half
        init = float(o.get("scale", 0.5)) / (1.0 if tag == "wt" else float(o.get("boundary", 1.0)))
        al = [torch.nn.Parameter(torch.full(pshape(tag, g), init)) for _ in range(L - 1)]

        def f(x):
            shp = x.shape
            xv = x.reshape(g, -1, *shp[2:]) if tag == "wt" else x.reshape(shp[0], g, 1, -1)
            a = [p.abs() if tag == "wt" else p.abs().reshape(1, g, 1, 1) for p in al]
            if full:
                y = RoundSTE.apply(clamp_ws(xv * a[0], -1, 0, ss)) + \
                    RoundSTE.apply(clamp_ws(xv * a[1], 0, 1, ss))
            else:
                y, t = 0, xv
                for i in range(L - 1):
                    y = y + RoundSTE.apply(clamp_ws(t * a[i], 0, 1, ss))
                    t = t - 1 / a[i]
            return y.reshape(shp)
        return f, al
    if m == "lqnet":
        if o.get("adaptive", "none") != "none":
            raise ValueError("adaptive")
        if tag != "wt" and g != 1:
            raise ValueError("quant_group")
        bit = 1 if L == 3 else int(float(o.get("bit", 32)))
        fan = shape[1] * shape[2] * shape[3]
        beta = 0.6745 * 2 / 2 ** (bit - 1) if tag != "wt" else \
            0.6745 * math.sqrt(2 / fan) / 2 ** (bit - 1)
        st = {"basis": torch.stack([torch.full((g,), (2 ** i) * beta) for i in range(bit)])}
        E = torch.tensor([[1.0 if (k >> j) & 1 else (0.0 if half else -1.0) for j in range(bit)]
                          for k in range(L)])
        T = torch.zeros(L - 1, L)
        for i in range(1, L):
            T[i - 1, i - 1] = T[i - 1, i] = 0.5

        class LQ(torch.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                v = st["basis"]
                lev, perm = torch.sort(E @ v, dim=0)
                thr = T @ lev
                xg = x.reshape(g, -1) if tag == "wt" else \
                    (x.reshape(1, -1) if g == 1 else x.transpose(0, 1).reshape(g, -1))
                idx = torch.zeros_like(xg, dtype=torch.long)
                for i in range(1, L):
                    idx = torch.where(xg > thr[i - 1].unsqueeze(1), torch.full_like(idx, i), idx)
                yg = torch.gather(lev.t(), 1, idx)
                code = torch.gather(perm.t(), 1, idx)
                # quantization-error minimisation, per group (§2.11.4)
                B = E[code]  # (g, N, bit)
                BtB = B.transpose(1, 2) @ B
                Btx = (B.transpose(1, 2) @ xg.unsqueeze(2)).squeeze(2)
                if tag == "wt":
                    d = torch.arange(bit)
                    BtB[:, d, d] = (BtB[:, d, d] + 1e-4) * 1.000001
                    Btx = Btx + 1e-4 * v.t()
                else:
                    dg = BtB.diagonal(dim1=1, dim2=2)
                    dg[dg == 0] = 1e-5
                vs = torch.linalg.solve(BtB, Btx).t()
                st["basis"] = 0.9 * v + 0.1 * vs
                ctx.save_for_backward(x, lev[-1])
                y = yg.reshape(x.shape) if tag == "wt" or g == 1 else \
                    yg.reshape(x.shape[1], x.shape[0], *x.shape[2:]).transpose(0, 1)
                return y

            @staticmethod
            def backward(ctx, gy):
                x, lmax = ctx.saved_tensors
                if tag == "wt":
                    return gy
                return gy * (x < lmax[0]).float()
        return LQ.apply, []
    raise ValueError("method " + m)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--wt", default="512,512,3,3")
    ap.add_argument("--fm", default="32,64,56,56")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    clock = time.process_time if a.threads == 1 else time.perf_counter
    shapes = {"wt": tuple(int(v) for v in a.wt.split(",")),
              "fm": tuple(int(v) for v in a.fm.split(","))}
    shapes["ot"] = shapes["fm"]
    gen = torch.Generator().manual_seed(1)
    for idx, case in enumerate(a.case):
        words = case.split()
        tag, o = words[0], dict(w.split("=", 1) for w in words[1:])
        shape = shapes[tag]
        try:
            f, params = make(tag, o, shape)
        except ValueError as e:
            print("torch %d unsupported %s" % (idx, e), flush=True)
            continue
        x = ((torch.rand(shape, generator=gen) * 4 - 2) * 0.5).requires_grad_(True)
        gy = torch.rand(shape, generator=gen) * 4 - 2
        fw, bw, tot = [], [], []
        for r in range(a.reps + 1):
            x.grad = None
            for p in params:
                p.grad = None
            t0 = clock()
            y = f(x)
            t1 = clock()
            y.backward(gy)
            t2 = clock()
            if r > 0:
                fw.append(t1 - t0)
                bw.append(t2 - t1)
                tot.append(t2 - t0)
        print("torch %d ms=%.3f fwd_ms=%.3f bwd_ms=%.3f" % (idx, min(tot) * 1e3, min(fw) * 1e3,
                                                             min(bw) * 1e3), flush=True)


if __name__ == "__main__":
    main()
