#!/usr/bin/env python3
"""The PyTorch peer of benches/cpu_peer.rs: the same DS-MoE model and batch, timed on the CPU.

Reads the config the bench writes (`cargo bench --bench cpu_peer -- SHAPE --config-out C.json`)
and builds the same architecture in plain PyTorch: byte embedding (tied LM head when the config
says so), RMSNorm, mixture-of-attention-heads with rotary positions, shared GQA keys/values and a
softmax router scaling each expert's heads, the DS-MoE MLP (every expert on every token, gated by
its router probability: one product of width E*f, tanh-GeLU, one product back), the
mutual-information loss on every router, cross-entropy, gradient clipping and AdamW.

Measured (tokens/s of wall time after two warm-up steps, and, under the `_cpu` keys, tokens/s of
process CPU time: user + system of all threads), printed as one JSON line per variant:
- training steps, eager and (with --compile) torch.compile of the loss function;
- evaluation, dense (no_grad forward);
- evaluation with top-2 MLP routing as PyTorch users write it: per expert, gather its tokens,
  two products, scatter-add the weighted rows (`index_add_`).

Not part of CI: PyTorch installs from PyPI into a virtual environment outside the repository,
e.g. `python3 -m venv /work/venv && /work/venv/bin/pip install torch numpy`.
"""

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x, cos, sin):
    # x [B, T, H, dh]; rotate the two halves of each head.
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.cat([a * c - b * s, a * s + b * c], dim=-1)


def mutual_information(logits, probs):
    mean = probs.mean(0)
    neg_marginal_entropy = (mean * mean.log()).sum()
    token_entropy = -(probs * F.log_softmax(logits, -1)).sum(-1).mean()
    return neg_marginal_entropy + token_entropy


class Model(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        m = cfg["model"]
        self.m = m
        d, v, L = m["d_model"], m["vocab_size"], m["n_layers"]
        a, mlp = m["attention"], m["mlp"]
        self.ne_att, self.hpe, self.dh, self.hkv = a["n_experts"], a["heads_per_expert"], a["head_dim"], a["kv_heads"]
        self.hq = self.ne_att * self.hpe
        self.ne, self.width = mlp["n_experts"], mlp["expert_width"]
        self.eps = m.get("norm_eps", 1e-5)
        theta = m.get("rope_theta", 10000.0)
        std, out_std = 0.02, 0.02 / math.sqrt(2 * L)
        P = lambda *shape, s=std: torch.nn.Parameter(torch.randn(*shape) * s)
        self.embed = P(v, d)
        self.lm_head = None if m.get("tie_embeddings", True) else P(d, v)
        self.layers = torch.nn.ModuleList()
        for _ in range(L):
            layer = torch.nn.Module()
            layer.attn_norm = torch.nn.Parameter(torch.ones(d))
            layer.wq, layer.wk, layer.wv = P(d, self.hq * self.dh), P(d, self.hkv * self.dh), P(d, self.hkv * self.dh)
            layer.wo = P(self.hq * self.dh, d, s=out_std)
            layer.att_router = P(d, self.ne_att)
            layer.mlp_norm = torch.nn.Parameter(torch.ones(d))
            layer.w1 = P(self.ne * self.width, d)
            layer.w2 = P(self.ne * self.width, d, s=out_std)
            layer.mlp_router = P(d, self.ne)
            self.layers.append(layer)
        self.final_norm = torch.nn.Parameter(torch.ones(d))
        T = m["max_seq_len"]
        j = torch.arange(self.dh // 2, dtype=torch.float64)
        angle = torch.arange(T, dtype=torch.float64)[:, None] * theta ** (-2.0 * j / self.dh)
        self.register_buffer("cos", angle.cos().float())
        self.register_buffer("sin", angle.sin().float())

    def attention(self, layer, x, B, T):
        q = rope((x @ layer.wq).view(B, T, self.hq, self.dh), self.cos[:T], self.sin[:T]).transpose(1, 2)
        k = rope((x @ layer.wk).view(B, T, self.hkv, self.dh), self.cos[:T], self.sin[:T]).transpose(1, 2)
        v = (x @ layer.wv).view(B, T, self.hkv, self.dh).transpose(1, 2)
        rep = self.hq // self.hkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B * T, self.ne_att, self.hpe * self.dh)
        logits = x @ layer.att_router
        probs = logits.softmax(-1)
        y = (heads * probs[:, :, None]).reshape(B * T, self.hq * self.dh) @ layer.wo
        return y, logits, probs

    def mlp_dense(self, layer, x, probs):
        u = x @ layer.w1.t()
        g = F.gelu(u, approximate="tanh") * probs.repeat_interleave(self.width, dim=1)
        return g @ layer.w2

    def mlp_top2(self, layer, x, probs):
        # The loop a PyTorch user writes: per expert, its tokens' rows through its two products.
        w, idx = probs.topk(2, dim=-1)
        y = torch.zeros_like(x)
        f = self.width
        for e in range(self.ne):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            h = F.gelu(x[tok] @ layer.w1[e * f:(e + 1) * f].t(), approximate="tanh")
            y.index_add_(0, tok, (h @ layer.w2[e * f:(e + 1) * f]) * w[tok, slot, None])
        return y

    def forward(self, tokens, targets, sparse=False):
        B, T = tokens.shape
        h = self.embed[tokens.reshape(-1)]
        aux = 0.0
        L = self.m["n_layers"]
        for layer in self.layers:
            x = rms_norm(h, layer.attn_norm, self.eps)
            a, logits, probs = self.attention(layer, x, B, T)
            aux = aux + mutual_information(logits, probs) * (self.m["mi_alpha_att"] / L)
            h = h + a
            x = rms_norm(h, layer.mlp_norm, self.eps)
            logits = x @ layer.mlp_router
            probs = logits.softmax(-1)
            aux = aux + mutual_information(logits, probs) * (self.m["mi_alpha_mlp"] / L)
            h = h + (self.mlp_top2(layer, x, probs) if sparse else self.mlp_dense(layer, x, probs))
        h = rms_norm(h, self.final_norm, self.eps)
        out = h @ (self.embed.t() if self.lm_head is None else self.lm_head)
        ce = F.cross_entropy(out, targets.reshape(-1))
        return ce, aux


def batches(path, B, T, n, seed):
    data = torch.frombuffer(bytearray(open(path, "rb").read()), dtype=torch.uint8).long()
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        starts = torch.randint(0, data.numel() - T - 1, (B,), generator=g)
        w = torch.stack([data[s:s + T + 1] for s in starts.tolist()])
        yield w[:, :-1].contiguous(), w[:, 1:].contiguous()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--data", default="data/shakespeare.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="time torch.compile training instead of eager (evaluation is eager)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = json.load(open(args.config))
    t = cfg["train"]
    B, T = t["batch_size"], t["seq_len"]
    model = Model(cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": t["weight_decay"]}, {"params": other, "weight_decay": 0.0}], lr=t["lr"], betas=(t.get("beta1", 0.9), t.get("beta2", 0.95)))

    def loss_fn(x, y):
        ce, aux = model(x, y)
        return ce + aux

    step_loss = torch.compile(loss_fn) if args.compile else loss_fn

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = step_loss(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t["grad_clip"])
        opt.step()

    data = list(batches(args.data, B, T, 2 + args.train_steps, 1))
    for x, y in data[:2]:
        step(x, y)
    t0, c0 = time.perf_counter(), time.process_time()
    for x, y in data[2:]:
        step(x, y)
    tokens = args.train_steps * B * T
    variant = "torch-compile" if args.compile else "torch-eager"
    out = {"impl": variant, "shape": cfg["model"]["name"].removeprefix("cpu-peer-"), "threads": args.threads, "torch": torch.__version__,
           "train_tok_s": tokens / (time.perf_counter() - t0), "train_cpu_tok_s": tokens / (time.process_time() - c0)}
    if not args.compile:
        evals = list(batches(args.data, B, T, 1 + args.eval_batches, 2))
        with torch.no_grad():
            for name, sparse in (("eval_dense_tok_s", False), ("eval_topk2_tok_s", True)):
                model(*evals[0], sparse=sparse)
                t0, c0 = time.perf_counter(), time.process_time()
                for x, y in evals[1:]:
                    model(x, y, sparse=sparse)
                tokens = args.eval_batches * B * T
                out[name] = tokens / (time.perf_counter() - t0)
                out[name.replace("_tok_s", "_cpu_tok_s")] = tokens / (time.process_time() - c0)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
