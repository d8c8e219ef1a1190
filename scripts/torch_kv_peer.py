#!/usr/bin/env python3
"""PyTorch eager peer of `dsmoe bench inference --protocols output`: the same transformer (a dsmoe
config JSON: MoA attention with GQA-shared keys and values, rotary positions, RMSNorm, a DS-MoE MLP
run densely or top-k, tied LM head) with a KV cache, batch-1 greedy decode on the CPU, random
weights. Prints decode tokens per second (median of --repeats runs).

Not part of CI. PyTorch goes in a virtual environment outside the repository, e.g.
    python3 -m venv ~/torch-venv && ~/torch-venv/bin/pip install torch
    ~/torch-venv/bin/python scripts/torch_kv_peer.py --config configs/ds-moe-tiny.json --tokens 127
and the dsmoe side, on the same machine at the same time:
    dsmoe bench inference --random-weights ds-moe-tiny --protocols output --output-tokens 127
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


class Model:
    def __init__(self, m, dtype, mode):
        g = torch.Generator().manual_seed(0)
        a, f = m["attention"], m["mlp"]
        self.d, self.v, self.eps = m["d_model"], m["vocab_size"], m.get("norm_eps", 1e-5)
        self.ea, self.hpe, self.dh, self.hkv = a["n_experts"], a["heads_per_expert"], a["head_dim"], a["kv_heads"]
        self.hq = self.ea * self.hpe
        self.ef, self.width = f["n_experts"], f["expert_width"]
        self.mode, self.ctx = mode, m["max_seq_len"]
        r = lambda *s: (torch.randn(*s, generator=g) * 0.02).to(dtype)
        self.embed = r(self.v, self.d)
        self.layers = []
        for _ in range(m["n_layers"]):
            self.layers.append(dict(
                an=torch.ones(self.d, dtype=dtype), mn=torch.ones(self.d, dtype=dtype),
                wq=r(self.d, self.hq * self.dh), wk=r(self.d, self.hkv * self.dh), wv=r(self.d, self.hkv * self.dh),
                wo=r(self.hq * self.dh, self.d), ra=r(self.d, self.ea) if self.ea > 1 else None,
                w1=r(self.ef, self.width, self.d), w2=r(self.ef, self.width, self.d), rm=r(self.d, self.ef) if self.ef > 1 else None))
        self.norm = torch.ones(self.d, dtype=dtype)
        half = self.dh // 2
        inv = m.get("rope_theta", 10000.0) ** (-2.0 * torch.arange(half, dtype=torch.float64) / self.dh)
        ang = torch.arange(self.ctx, dtype=torch.float64)[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().to(dtype), ang.sin().to(dtype)
        self.dtype = dtype

    def rope(self, x, pos):  # x [T, H, dh]
        c, s = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        x1, x2 = x.chunk(2, -1)
        return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    def mlp(self, L, x):
        if L["rm"] is None:
            return F.gelu(x @ L["w1"][0].T, approximate="tanh") @ L["w2"][0]
        p = torch.softmax(x @ L["rm"], -1)
        if self.mode == "dense":
            h = F.gelu(torch.einsum("td,efd->tef", x, L["w1"]), approximate="tanh") * p[:, :, None]
            return torch.einsum("tef,efd->td", h, L["w2"])
        k = int(self.mode.split(":")[1])
        w, idx = p.topk(k, -1)
        y = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(k):
                e = idx[t, j]
                y[t] += w[t, j] * (F.gelu(L["w1"][e] @ x[t], approximate="tanh") @ L["w2"][e])
        return y

    @torch.inference_mode()
    def step(self, tokens, start, cache):
        T = tokens.shape[0]
        pos = torch.arange(start, start + T)
        h = self.embed[tokens]
        for i, L in enumerate(self.layers):
            x = rms_norm(h, L["an"], self.eps)
            q = self.rope((x @ L["wq"]).view(T, self.hq, self.dh), pos)
            k = self.rope((x @ L["wk"]).view(T, self.hkv, self.dh), pos)
            v = (x @ L["wv"]).view(T, self.hkv, self.dh)
            kc, vc = cache[i]
            kc[start:start + T], vc[start:start + T] = k, v
            K = kc[: start + T].transpose(0, 1).repeat_interleave(self.hq // self.hkv, 0)
            V = vc[: start + T].transpose(0, 1).repeat_interleave(self.hq // self.hkv, 0)
            o = F.scaled_dot_product_attention(q.transpose(0, 1), K, V, is_causal=T > 1)
            o = o.transpose(0, 1)
            if L["ra"] is not None:
                gate = torch.softmax(x @ L["ra"], -1)
                o = (o.reshape(T, self.ea, self.hpe * self.dh) * gate[:, :, None]).reshape(T, self.hq, self.dh)
            h = h + o.reshape(T, -1) @ L["wo"]
            h = h + self.mlp(L, rms_norm(h, L["mn"], self.eps))
        return rms_norm(h[-1:], self.norm, self.eps) @ self.embed.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/ds-moe-tiny.json")
    ap.add_argument("--tokens", type=int, default=127)
    ap.add_argument("--mode", default="dense", help="dense or top-k:K (MLP experts)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    m = json.load(open(a.config))["model"]
    dtype = getattr(torch, a.dtype)
    model = Model(m, dtype, a.mode)
    if a.tokens + 1 > model.ctx:
        raise SystemExit(f"--tokens {a.tokens} + a one-token prompt exceed the context of {model.ctx}")
    rates = []
    for _ in range(a.repeats + 1):
        cache = [(torch.zeros(model.ctx, model.hkv, model.dh, dtype=dtype), torch.zeros(model.ctx, model.hkv, model.dh, dtype=dtype)) for _ in model.layers]
        tok = torch.tensor([1])
        t0 = time.perf_counter()
        for i in range(a.tokens):
            tok = model.step(tok, i, cache).argmax(-1)
        rates.append(a.tokens / (time.perf_counter() - t0))
    rates = rates[1:]  # the first run warms up
    print(f"pytorch {torch.__version__} eager, {m['name']} {a.mode} {a.dtype}, batch 1, {a.tokens} tokens, "
          f"{torch.get_num_threads()} threads: {statistics.median(rates):.1f} tokens/s (median of {len(rates)})")


if __name__ == "__main__":
    main()
