"""``fastattn bench quality``: does a small model built on each attention variant learn?

Two tasks, one model per attention variant (issue 16, section 3):

* **MQAR**, multi-query associative recall (the synthetic task of Zoology and Based): key-value
  pairs, then every key asked once in random order; the answer to a query is the value that
  followed that key. Reported: accuracy on held-out queries per (sequence length, pairs), against
  the recurrent state the variant keeps (features x head_dim_v x heads; softmax keeps its KV cache,
  T x (head_dim + head_dim_v) x heads, which grows with T).
* **A byte-level language model** on the Python standard library's own ``.py`` files (present on
  every machine, no download), split by file: validation bits per byte after a fixed token budget.

Every model is the same but for its attention: an embedding, ``layers`` blocks of
[RMSNorm, short causal depthwise convolution, attention, residual; RMSNorm, MLP, residual], a final
norm and a linear head; no position embedding. The short convolution (as in Based) hands every
variant the previous token, which a key-value binding needs and which a linear map cannot pick out
by itself. Feature-map variants project q and k to ``key_dim`` (16 as in Based, 8 for the cubic),
v keeps the head dim. Maps that can be negative run unnormalised with an RMSNorm on each head's
output (their sums grow with T); the others divide by sum_j f.

Runs on CUDA (bf16 autocast; the fastattn layers take their Triton kernels there) or, with
``--cpu``, on the CPU. ``--quick`` is a preset sized for a few GPU minutes; a time budget per task
shortens training runs evenly when the machine is slower than planned (each run records the steps it
made), and results are rewritten to ``--json`` after every model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["Variant", "VARIANTS", "mqar_batch", "stdlib_split", "QualityModel", "train_mqar_variant",
           "train_lm_variant", "state_size", "add_arguments", "run"]

IGNORE = -100  # target of a position that is not a query (cross_entropy's ignore_index)


# -- variants -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One attention variant: how q [B, H, T, key_dim], k, v [B, H, T, head_dim] become the output.

    ``kind`` is "softmax" (SDPA, causal), "poly" (:class:`fastattn.attention.FastAttention` of
    ``spec``), "favor" (FAVOR+ positive random features for exp, ``features`` per head) or "hybrid"
    (:func:`fastattn.attention.hybrid.hybrid_attention`: exact softmax over the last ``window`` keys
    of the task, ``spec`` outside). ``approx`` = (method, degree, radius) replaces ``spec`` by that
    certified polynomial approximation (:func:`fastattn.feature_map`). ``key_dim`` 0 is the head dim.
    """

    name: str
    kind: str
    label: str
    spec: str = ""
    key_dim: int = 0
    normalize: bool = True
    features: int = 0
    approx: tuple = ()


VARIANTS = {v.name: v for v in (
    Variant("softmax", "softmax", "softmax (SDPA)"),
    Variant("x", "poly", "x (linear), d=16", "x", 16, normalize=False),
    Variant("taylor2", "poly", "1+x+x²/2 (Based), d=16", "1 + x + x**2/2", 16),
    # the same map at a sharper temperature: Taylor-2 of exp(2x), exp(4x) (whether Based's scale is the problem)
    Variant("taylor2s2", "poly", "1+2x+2x² (Based at 2x scale), d=16", "1 + (2*x) + (2*x)**2/2", 16),
    Variant("taylor2s4", "poly", "1+4x+8x² (Based at 4x scale), d=16", "1 + (4*x) + (4*x)**2/2", 16),
    Variant("x2", "poly", "x², d=16", "x**2", 16),
    Variant("cube", "poly", "(1+x)³, d=8", "(1+x)**3", 8, normalize=False),
    Variant("cheb2", "poly", "exp ≈ Chebyshev-2 (R=2), d=16", "exp(x)", 16, approx=("chebyshev", 2, 2)),
    Variant("favor", "favor", "exp ≈ FAVOR+ 128 features, d=16", "", 16, features=128),
    Variant("hybrid", "hybrid", "window softmax + 1+x+x²/2, d=16", "1 + x + x**2/2", 16),
)}
LM_VARIANTS = ("softmax", "x", "taylor2", "x2", "hybrid")


def _polynomial(variant: Variant, key_dim: int):
    from fastattn.kernels.poly import polynomial

    if not variant.approx:
        return polynomial(variant.spec)
    import fastattn

    method, degree, radius = variant.approx
    fm = fastattn.feature_map(variant.spec, key_dim, method=method, degree=degree, radius=radius, positive=True)
    return polynomial({j: float(c) for j, c in fm.coefficients.items()})


def state_size(variant: Variant, heads: int, head_dim: int, seq_len: int, window: int) -> int:
    """Floats of recurrent state a decoder keeps: F x head_dim_v x heads (softmax: its KV cache at seq_len)."""
    dk = variant.key_dim or head_dim
    if variant.kind == "softmax":
        return seq_len * (dk + head_dim) * heads
    if variant.kind == "favor":
        return variant.features * head_dim * heads
    features = _polynomial(variant, dk).feature_dim(dk)
    extra = window * (dk + head_dim) if variant.kind == "hybrid" else 0
    return (features * head_dim + extra) * heads


# -- the model ------------------------------------------------------------------------------------
class Mixer(nn.Module):
    """Multi-head causal attention of one variant, [B, T, d_model] -> [B, T, d_model]."""

    def __init__(self, variant: Variant, d_model: int, heads: int, *, window: int, backend: str):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model={d_model} must be divisible by heads={heads}")
        self.variant, self.heads, self.window = variant, heads, window
        self.dv = d_model // heads
        self.dk = variant.key_dim or self.dv
        self.q = nn.Linear(d_model, heads * self.dk, bias=False)
        self.k = nn.Linear(d_model, heads * self.dk, bias=False)
        self.v = nn.Linear(d_model, heads * self.dv, bias=False)
        self.out = nn.Linear(heads * self.dv, d_model, bias=False)
        if variant.kind == "poly":
            from fastattn.attention import FastAttention

            self.core = FastAttention(_polynomial(variant, self.dk), self.dk, self.dv, normalize=variant.normalize,
                                      backend=backend)
        elif variant.kind == "hybrid":
            self.poly = _polynomial(variant, self.dk)
        elif variant.kind == "favor":
            # fixed Gaussian projections (no redraws): a part of the model like any other buffer
            self.register_buffer("proj", torch.randn(heads, variant.features, self.dk))

    def _favor(self, q, k, v):
        # exp(s q.k) = E_w[exp(w.q' - |q'|^2/2) exp(w.k' - |k'|^2/2)], q' = sqrt(s) q; quadratic form,
        # equal to the linear one. The key shift is one constant per sequence, so it cancels in the ratio.
        q, k, v = (t.float() for t in (q, k, v))
        r = self.dk ** -0.25
        proj = self.proj.transpose(-1, -2)[None]  # [1, H, dk, m]
        wq, wk = (r * q) @ proj, (r * k) @ proj  # [B, H, T, m]
        lq, lk = wq - (r * q).square().sum(-1, keepdim=True) / 2, wk - (r * k).square().sum(-1, keepdim=True) / 2
        phi_q = torch.exp(lq - lq.amax(-1, keepdim=True).detach())
        phi_k = torch.exp(lk - lk.amax((-1, -2), keepdim=True).detach())
        a = (phi_q @ phi_k.transpose(-1, -2)).tril()  # [B, H, T, T]
        return (a @ v) / (a.sum(-1, keepdim=True) + 1e-20)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.heads, self.dk).transpose(1, 2)
        k = self.k(x).view(B, T, self.heads, self.dk).transpose(1, 2)
        v = self.v(x).view(B, T, self.heads, self.dv).transpose(1, 2)
        kind = self.variant.kind
        if kind == "softmax":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif kind == "poly":
            o = self.core(q, k, v)
        elif kind == "hybrid":
            from fastattn.attention.hybrid import hybrid_attention

            o = hybrid_attention(q, k, v, self.poly, window=self.window)
        else:
            # float32 throughout: under autocast the feature products would drop to bf16
            with torch.autocast(x.device.type, enabled=False):
                o = self._favor(q, k, v)
        if not self.variant.normalize:
            o = F.rms_norm(o.float(), (self.dv,))
        return self.out(o.to(x.dtype).transpose(1, 2).reshape(B, T, self.heads * self.dv))


class Block(nn.Module):
    def __init__(self, variant, d_model, heads, *, window, backend, conv=4):
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(d_model), nn.RMSNorm(d_model)
        self.conv = nn.Conv1d(d_model, d_model, conv, groups=d_model, padding=conv - 1)
        self.mixer = Mixer(variant, d_model, heads, window=window, backend=backend)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x):
        h = self.norm1(x)
        h = self.conv(h.transpose(1, 2))[..., :x.shape[1]].transpose(1, 2)  # causal: drop the right padding
        x = x + self.mixer(h)
        return x + self.mlp(self.norm2(x))


class QualityModel(nn.Module):
    """Embedding, ``layers`` blocks, final norm; :meth:`forward` gives hidden states, :meth:`logits` the head
    (tied to the embedding)."""

    def __init__(self, variant: Variant, vocab: int, d_model: int, layers: int, heads: int, *, window: int = 16,
                 backend: str = "auto"):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.blocks = nn.ModuleList(Block(variant, d_model, heads, window=window, backend=backend)
                                    for _ in range(layers))
        self.norm = nn.RMSNorm(d_model)
        # tied: a recalled value's own embedding scores it, so no output row per value has to be learned first
        self.head = nn.Linear(d_model, vocab, bias=False)
        self.head.weight = self.embed.weight
        # unit-RMS hidden states against rows of norm ~1: logits start O(1), the loss near log(vocab)
        nn.init.normal_(self.embed.weight, std=d_model ** -0.5)

    def forward(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def logits(self, hidden):
        return self.head(hidden)


# -- MQAR -----------------------------------------------------------------------------------------
def mqar_batch(batch: int, seq_len: int, num_kv: int, vocab: int, *, generator=None, device="cpu"):
    """A batch of multi-query associative recall: (tokens [batch, seq_len], targets [batch, seq_len]).

    Positions 0 .. 2n-1 hold n pairs (key, value): keys distinct within a sequence, drawn from
    1 .. vocab/2 - 1, values from vocab/2 .. vocab - 1 (with repeats). The rest (token 0 elsewhere)
    asks every key once, in random order, at random non-overlapping places: a query key at t is
    followed by its value at t + 1, and ``targets[t]`` is that value; every other target is -100.

    >>> x, y = mqar_batch(2, 16, 3, 32, generator=torch.Generator().manual_seed(0))
    >>> int((y != -100).sum())
    6
    """
    for name, value, low in (("batch", batch, 1), ("seq_len", seq_len, 4), ("num_kv", num_kv, 1), ("vocab", vocab, 4)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"mqar_batch: {name}={value!r} must be an int >= {low}")
    if seq_len < 4 * num_kv:
        raise ValueError(f"mqar_batch: seq_len={seq_len} holds {num_kv} pairs and {num_kv} queries of 2 tokens "
                         f"only if seq_len >= 4 * num_kv = {4 * num_kv}")
    half = vocab // 2
    if half - 1 < num_kv:
        raise ValueError(f"mqar_batch: vocab={vocab} has {half - 1} key tokens, fewer than num_kv={num_kv} distinct "
                         f"keys; use vocab >= {2 * num_kv + 2}")
    kw = dict(generator=generator, device=device)
    rows = torch.arange(batch, device=device)[:, None]
    keys = torch.rand(batch, half - 1, **kw).argsort(-1)[:, :num_kv] + 1  # [B, n], distinct per row
    values = torch.randint(half, vocab, (batch, num_kv), **kw)
    tokens = torch.zeros(batch, seq_len, dtype=torch.long, device=device)
    targets = torch.full_like(tokens, IGNORE)
    tokens[:, 0:2 * num_kv:2], tokens[:, 1:2 * num_kv:2] = keys, values
    # n starts among the free L positions, at least 2 apart: n distinct sorted picks s_j from L - n, start_j = s_j + j
    free = seq_len - 2 * num_kv
    picks = torch.rand(batch, free - num_kv, **kw).argsort(-1)[:, :num_kv].sort(-1).values
    starts = 2 * num_kv + picks + torch.arange(num_kv, device=device)
    order = torch.rand(batch, num_kv, **kw).argsort(-1)  # which pair each query asks
    asked_k, asked_v = keys.gather(1, order), values.gather(1, order)
    tokens[rows, starts], tokens[rows, starts + 1], targets[rows, starts] = asked_k, asked_v, asked_v
    return tokens, targets


def _parse_settings(items, option):
    out = []
    for item in items:
        try:
            T, n = (int(s) for s in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"{option} {item!r}: expected SEQxPAIRS, e.g. 256x16") from None
        if T < 4 * n or n < 1:
            raise ValueError(f"{option} {item!r}: needs pairs >= 1 and seq >= 4 * pairs (pairs, then a query each)")
        out.append((T, n))
    return out


# -- training -------------------------------------------------------------------------------------
def _autocast(device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def _train(model, next_batch, loss_of, *, steps, lr, device, deadline, warmup=0.1):
    """AdamW (weight decay 0.1 on matrices), linear warm-up then cosine decay, grad clip 1.

    The schedule follows progress = the larger of step / steps and the fraction of the time up to
    ``deadline`` (time.monotonic()) spent, so a run cut short by its deadline still decays to 0; it
    stops there, or at a non-finite loss. Returns the per-step losses.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))
    model.train()
    losses = []
    t0 = time.monotonic()
    for step in range(steps):
        now = time.monotonic()
        if now > deadline:
            break
        progress = min(1.0, max((step + 1) / steps, (now - t0) / (deadline - t0) if math.isfinite(deadline) else 0.0))
        if progress < warmup:
            scale = progress / warmup
        else:
            scale = 0.5 * (1 + math.cos(math.pi * (progress - warmup) / (1 - warmup)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        with _autocast(device):
            loss = loss_of(model, *next_batch(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.detach())
        if step % 50 == 49 and not torch.isfinite(losses[-1]):
            break
    return torch.stack(losses).float().tolist() if losses else []


def _ends(losses):
    """'first -> last' of a loss curve, each the mean of 10 steps."""
    if not losses:
        return "none"
    return f"{sum(losses[:10]) / len(losses[:10]):.3f} -> {sum(losses[-10:]) / len(losses[-10:]):.3f}"


def _mqar_loss(model, tokens, targets):
    at = targets != IGNORE
    return F.cross_entropy(model.logits(model(tokens)[at]).float(), targets[at])


@torch.no_grad()
def mqar_accuracy(model, tokens, targets, *, device, batch=64) -> float:
    """Fraction of query positions whose argmax is the right value."""
    model.eval()
    right = total = 0
    for a in range(0, len(tokens), batch):
        x, y = tokens[a:a + batch], targets[a:a + batch]
        at = y != IGNORE
        with _autocast(device):
            pred = model.logits(model(x)[at]).argmax(-1)
        right += int((pred == y[at]).sum())
        total += int(at.sum())
    return right / max(total, 1)


def _seed(seed):
    torch.manual_seed(seed)


def train_mqar_variant(variant: Variant, cfg: dict, *, device, eval_sets, deadline) -> dict:
    """Train one model per learning rate; keep the best on the validation sets; its test accuracies.

    ``eval_sets`` = {"val": {(T, n): (tokens, targets)}, "test": {...}}; ``cfg`` as ``_mqar_config`` builds.
    """
    warm = _warm_up(variant, cfg, device, [(cfg["batch"], T, n) for T, n in cfg["train"]])
    runs = []
    for i, lr in enumerate(cfg["lrs"]):
        t0 = time.monotonic()
        share = (deadline - t0) / (len(cfg["lrs"]) - i)
        _seed(cfg["seed"])  # one initialisation and one data stream for every lr and variant
        model = QualityModel(variant, cfg["vocab"], cfg["d_model"], cfg["layers"], cfg["heads"],
                             window=cfg["window"], backend=cfg["backend"]).to(device)
        gen = torch.Generator(device=device).manual_seed(cfg["seed"])
        settings = cfg["train"]

        def next_batch(step):
            T, n = settings[step % len(settings)]
            return mqar_batch(cfg["batch"], T, n, cfg["vocab"], generator=gen, device=device)

        losses = _train(model, next_batch, _mqar_loss, steps=cfg["steps"], lr=lr, device=device,
                        deadline=t0 + 0.85 * share)
        ok = bool(losses) and all(math.isfinite(v) for v in losses)
        acc = {part: {f"{T}x{n}": (mqar_accuracy(model, *data, device=device) if ok else 0.0)
                      for (T, n), data in sets.items()} for part, sets in eval_sets.items()}
        runs.append(dict(lr=lr, steps=len(losses), losses=losses, finite=ok, val=acc["val"], test=acc["test"],
                         seconds=round(time.monotonic() - t0, 2)))
        print(f"  {variant.name} lr {lr:g}: {len(losses)} steps, loss {_ends(losses)}, val "
              + " ".join(f"{k}={v:.3f}" for k, v in acc["val"].items()) + f" ({runs[-1]['seconds']:.1f} s)", flush=True)
        del model
    best = max(runs, key=lambda r: (sum(r["val"].values()), -r["lr"]))
    return dict(best=best, runs=runs, warmup_s=warm)


def _warm_up(variant, cfg, device, shapes, vocab=None):
    """One forward and backward per training shape, outside the runs' time: compiles the kernels first."""
    t0 = time.monotonic()
    if device.type == "cuda":
        vocab = vocab or cfg["vocab"]
        model = QualityModel(variant, vocab, cfg["d_model"], cfg["layers"], cfg["heads"], window=cfg["window"],
                             backend=cfg["backend"]).to(device)
        for B, T, _ in shapes:
            with _autocast(device):
                h = model(torch.randint(0, vocab, (B, T), device=device))
            h.float().square().mean().backward()
        torch.cuda.synchronize()
    return round(time.monotonic() - t0, 2)


# -- the byte-level LM on the standard library ----------------------------------------------------
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def stdlib_split(root=None, *, val_every: int = 10) -> tuple[list[Path], list[Path]]:
    """The .py files under the standard library (``root``), sorted by relative path, split by file.

    Test suites and installed packages are left out. File i of the sorted list goes to validation
    when i % val_every == 0, else to training: deterministic, and no file is in both.
    """
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    if not root.is_dir():
        raise FileNotFoundError(2, "the standard library directory is missing", str(root))
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]  # pruned, not walked: site-packages can be large
        files += [Path(folder, n) for n in names if n.endswith(".py")]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    if len(files) < 2:
        raise ValueError(f"{root}: found {len(files)} .py files; the LM needs at least 2 (one per split)")
    val = [p for i, p in enumerate(files) if i % val_every == 0]
    train = [p for i, p in enumerate(files) if i % val_every != 0]
    return train, val


def read_bytes(files, limit: int) -> torch.Tensor:
    """The files' bytes, in order, each followed by a newline, cut at ``limit`` bytes: uint8 [N]."""
    parts, size = [], 0
    for path in files:
        if size >= limit:
            break
        data = path.read_bytes() + b"\n"
        parts.append(data[:limit - size])
        size += len(parts[-1])
    return torch.frombuffer(bytearray(b"".join(parts)), dtype=torch.uint8)


def _lm_loss(model, x, y):
    return F.cross_entropy(model.logits(model(x)).float().flatten(0, 1), y.flatten())


@torch.no_grad()
def bits_per_byte(model, data, context, *, device, batch=32) -> float:
    """Mean cross-entropy (bits) over non-overlapping windows of ``context`` + 1 bytes of ``data``."""
    model.eval()
    n = (len(data) - 1) // context
    if n < 1:
        raise ValueError(f"the validation text has {len(data)} bytes, fewer than one window of {context + 1}")
    windows = data[:n * context + 1].long()
    total, count = 0.0, 0
    for a in range(0, n, batch):
        idx = torch.arange(a, min(a + batch, n))[:, None] * context + torch.arange(context + 1)
        w = windows[idx].to(device)
        with _autocast(device):
            h = model(w[:, :-1])
        ce = F.cross_entropy(model.logits(h).float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum")
        total, count = total + float(ce), count + w[:, 1:].numel()
    return total / count / math.log(2)


def train_lm_variant(variant: Variant, cfg: dict, *, device, train_data, val_data, deadline) -> dict:
    """Train one byte-level model for ``cfg["steps"]`` steps (or to ``deadline``); its validation bits per byte."""
    warm = _warm_up(variant, cfg, device, [(cfg["batch"], cfg["context"], 0)], vocab=256)
    t0 = time.monotonic()
    _seed(cfg["seed"])
    model = QualityModel(variant, 256, cfg["d_model"], cfg["layers"], cfg["heads"], window=cfg["window"],
                         backend=cfg["backend"]).to(device)
    gen = torch.Generator().manual_seed(cfg["seed"])
    T, B = cfg["context"], cfg["batch"]
    data = train_data.to(device)

    def next_batch(step):
        starts = torch.randint(0, len(data) - T - 1, (B,), generator=gen).to(device)
        idx = starts[:, None] + torch.arange(T + 1, device=device)
        w = data[idx].long()
        return w[:, :-1], w[:, 1:]

    losses = _train(model, next_batch, _lm_loss, steps=cfg["steps"], lr=cfg["lr"], device=device,
                    deadline=t0 + 0.9 * (deadline - t0))
    ok = bool(losses) and all(math.isfinite(v) for v in losses)
    bpb = bits_per_byte(model, val_data, T, device=device) if ok else float("nan")
    return dict(lr=cfg["lr"], steps=len(losses), tokens=len(losses) * B * T, finite=ok, val_bpb=bpb,
                train_bpb_last=(sum(losses[-10:]) / len(losses[-10:]) / math.log(2)) if losses else float("nan"),
                losses=losses, seconds=round(time.monotonic() - t0, 2), warmup_s=warm)


# -- presets and the command ----------------------------------------------------------------------
MQAR_FULL = dict(vocab=8192, d_model=128, layers=2, heads=2, steps=4000, batch=64, lrs=[1e-3, 3e-3, 1e-2],
                 train=["64x4", "128x8", "256x16", "256x32", "256x64"],
                 test=["64x4", "128x8", "256x16", "256x32", "256x64", "512x64", "512x128", "1024x128", "1024x256"],
                 eval_size=1000, window=16, budget=None)
# quick: one learning rate, so that each model gets all of its share of the budget (softmax needs
# ~800 steps at lr 3e-3..1e-2 to recall 4 pairs in T=32 at vocab 8192, on the CPU)
MQAR_QUICK = dict(MQAR_FULL, d_model=64, steps=2000, lrs=[5e-3], train=["64x4", "128x8", "256x16"],
                  test=["128x8", "256x16", "512x64"], eval_size=256, budget=165.0)
LM_FULL = dict(d_model=128, layers=4, heads=2, context=512, batch=32, steps=3000, lr=2e-3, window=64,
               train_bytes=16 << 20, val_bytes=1 << 20, budget=None)
# quick: 4 heads, so head_dim_v = 32 as in quick MQAR and the LM reuses the kernels compiled there
LM_QUICK = dict(LM_FULL, layers=2, heads=4, context=256, batch=32, steps=600, lr=3e-3, train_bytes=4 << 20,
                val_bytes=256 << 10, budget=65.0)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fastattn bench quality``; unset ones come from the full or the --quick preset."""
    p.add_argument("--task", choices=("mqar", "lm", "both"), default="both", help="which task(s) (default both)")
    p.add_argument("--quick", action="store_true", help="the few-GPU-minutes preset: MQAR within 165 s, the LM within 65 s (budgets)")
    p.add_argument("--cpu", action="store_true", help="allow running on the CPU (tiny sizes only; for smoke tests)")
    p.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                   help=f"MQAR variants (default all: {' '.join(VARIANTS)})")
    p.add_argument("--lm-variants", nargs="+", default=None, metavar="NAME",
                   help=f"LM variants (default {' '.join(LM_VARIANTS)})")
    p.add_argument("--json", dest="json_out", default=None, metavar="OUT.json", help="write the results here")
    p.add_argument("--plot", default=None, metavar="OUT.png", help="draw accuracy (and bpb) against state size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=("auto", "torch"), default="auto",
                   help="fastattn layers: auto (Triton on CUDA) or torch (default auto)")
    g = p.add_argument_group("MQAR (defaults: the full preset; --quick changes them)")
    for key, kind, help_ in (("vocab", int, "vocabulary"), ("d_model", int, "model width"), ("layers", int, None),
                             ("heads", int, None), ("steps", int, "training steps per run"),
                             ("batch", int, "sequences per step"), ("eval_size", int, "sequences per eval setting"),
                             ("window", int, "hybrid's softmax window"), ("budget", float, "seconds for the task")):
        g.add_argument(f"--{key.replace('_', '-')}", dest=f"mqar_{key}", type=kind, default=None,
                       help=f"{help_ or key} (full {MQAR_FULL[key]}, quick {MQAR_QUICK[key]})")
    g.add_argument("--lrs", dest="mqar_lrs", type=float, nargs="+", default=None,
                   help=f"learning rates swept, the best kept (full {MQAR_FULL['lrs']}, quick {MQAR_QUICK['lrs']})")
    g.add_argument("--train", dest="mqar_train", nargs="+", default=None, metavar="SEQxPAIRS",
                   help=f"training settings, one per step in turn (full {' '.join(MQAR_FULL['train'])}; quick "
                        f"{' '.join(MQAR_QUICK['train'])})")
    g.add_argument("--test", dest="mqar_test", nargs="+", default=None, metavar="SEQxPAIRS",
                   help=f"held-out settings (full {' '.join(MQAR_FULL['test'])}; quick {' '.join(MQAR_QUICK['test'])})")
    h = p.add_argument_group("character LM on the standard library")
    for key, kind in (("d_model", int), ("layers", int), ("heads", int), ("context", int), ("batch", int),
                      ("steps", int), ("lr", float), ("window", int), ("train_bytes", int), ("val_bytes", int),
                      ("budget", float)):
        h.add_argument(f"--lm-{key.replace('_', '-')}", dest=f"lm_{key}", type=kind, default=None,
                       help=f"(full {LM_FULL[key]}, quick {LM_QUICK[key]})")


def _config(args, prefix, full, quick):
    preset = quick if args.quick else full
    cfg = {k: (getattr(args, f"{prefix}_{k}") if getattr(args, f"{prefix}_{k}", None) is not None else v)
           for k, v in preset.items()}
    for k, v in cfg.items():
        bad = (isinstance(v, (int, float)) and not v > 0 or k == "lrs" and not all(lr > 0 for lr in v)
               or k == "d_model" and v % cfg["heads"])
        if bad and not (k == "window" and v == 0):
            option = f"--{'lm-' if prefix == 'lm' else ''}{k.replace('_', '-')}"
            raise ValueError(f"{option} {v}: must be > 0" + (f" and a multiple of the heads ({cfg['heads']})"
                                                              if k == "d_model" else ""))
    cfg.update(seed=args.seed, backend=args.backend)
    return cfg


def _names(wanted, default, option):
    names = list(default if wanted is None else wanted)
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise ValueError(f"{option}: unknown variant {bad[0]!r}; choose from {', '.join(VARIANTS)}")
    return names


def _table_mqar(res) -> str:
    tests = res["config"]["test"]
    head = ["variant", "state (floats)", "best lr", *[f"acc {t}" for t in tests], "steps", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r.get('state', '')} | error: {r['error'][:80]} |")
            continue
        b = r["best"]
        state = f"{r['state']:,}" + (" (KV at T max)" if r["kind"] == "softmax" else "")
        label = r["label"] + (" [torch path: Triton failed]" if "triton_error" in r else "")
        lines.append("| " + " | ".join([label, state, f"{b['lr']:g}", *[f"{b['test'][t]:.3f}" for t in tests],
                                       str(b["steps"]), f"{sum(x['seconds'] for x in r['runs']):.0f}"]) + " |")
    return "\n".join(lines)


def _table_lm(res) -> str:
    lines = ["| variant | state (floats) | val bits/byte | train bits/byte | steps | tokens | s |",
             "|---|---|---|---|---|---|---|"]
    for r in res["results"]:
        if "error" in r:
            lines.append(f"| {r['label']} | {r.get('state', '')} | error: {r['error'][:80]} |")
            continue
        state = f"{r['state']:,}" + (" (KV at context)" if r["kind"] == "softmax" else "")
        label = r["label"] + (" [torch path: Triton failed]" if "triton_error" in r else "")
        lines.append(f"| {label} | {state} | {r['val_bpb']:.3f} | {r['train_bpb_last']:.3f} | {r['steps']} | "
                     f"{r['tokens']:,} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def figure(data):
    """Accuracy against state size per MQAR test setting; LM bits per byte against state size and the LM's
    training curves (bits per byte, smoothed over 50 steps, against step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    mqar, lm = data.get("mqar"), data.get("lm")
    panels = [("mqar", t) for t in (mqar["config"]["test"] if mqar else [])] + ([("lm", None)] if lm else [])
    panels += [("curves", None)] if lm and any(r.get("losses") for r in lm["results"]) else []
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(3.6 * max(1, len(panels)) + 2.6, 3.6), squeeze=False)
    names = list(VARIANTS)
    colors = plt.get_cmap("tab10")
    handles = {}
    for ax, (task, setting) in zip(axes[0], panels):
        if task == "curves":
            _curves(ax, lm, names, colors)
            continue
        for r in (mqar if task == "mqar" else lm)["results"]:
            if "error" in r:
                continue
            i = names.index(r["variant"])
            if task == "mqar":
                x = r["state_at"][setting] if r["kind"] == "softmax" else r["state"]
                y = r["best"]["test"][setting]
            else:
                x, y = r["state"], r["val_bpb"]
            h = ax.scatter([x], [y], color=colors(i), marker="os^vD<>P"[i % 8], s=40, zorder=3)
            handles.setdefault(r["label"], h)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labelled minor ticks overlap on a short range
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("state size (floats)")
        if task == "mqar":
            T, n = setting.split("x")
            ax.set_title(f"MQAR T={T}, {n} pairs", fontsize=9)
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.03, 1.03)
        else:
            ax.set_title("stdlib bytes LM", fontsize=9)
            ax.set_ylabel("validation bits / byte")
    fig.legend(list(handles.values()), list(handles), loc="center left", bbox_to_anchor=(0.995, 0.5), fontsize=8,
               frameon=False)
    fig.tight_layout()
    return fig


def _curves(ax, lm, names, colors, smooth=50):
    for r in lm["results"]:
        losses = r.get("losses") or []
        if "error" in r or len(losses) < smooth:
            continue
        bits = torch.tensor(losses) / math.log(2)
        avg = bits.unfold(0, smooth, 1).mean(-1)  # a moving mean: a single batch's loss is noisy
        ax.plot(range(smooth, len(losses) + 1), avg.tolist(), color=colors(names.index(r["variant"])), lw=1.2)
    ax.set_title("stdlib bytes LM: training", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train bits / byte (mean of {smooth})")
    ax.grid(True, alpha=0.3)
    lo = min((min(r["losses"]) for r in lm["results"] if r.get("losses")), default=1.0) / math.log(2)
    ax.set_ylim(lo * 0.95, lo * 2.2)  # the first steps (8 bits) would flatten the part that differs


def _write(data, args):
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(data, indent=1, default=str))


def _with_fallback(train, variant, cfg, device, row):
    """``train(cfg)``; where a fastattn layer fails on its Triton path, once more on its torch path.

    The failure is kept in ``row["triton_error"]``: the quality numbers still come, and the kernel
    problem is named beside them.
    """
    triton = variant.kind == "poly" and cfg["backend"] == "auto" and device.type == "cuda"
    try:
        out = train(cfg)
        finite = any(r["finite"] for r in out["runs"]) if "runs" in out else out["finite"]
        if triton and not finite:
            raise FloatingPointError("every run's loss went non-finite")
        return out
    except Exception as exc:
        if not triton:
            raise
        row["triton_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        print(f"  {variant.name}: the Triton path failed ({row['triton_error'][:200]}); again on the torch path",
              flush=True)
        torch.cuda.empty_cache()
        return train(dict(cfg, backend="torch"))


def _mqar_config(args):
    cfg = _config(args, "mqar", MQAR_FULL, MQAR_QUICK)
    cfg["train"], cfg["test"] = _parse_settings(cfg["train"], "--train"), _parse_settings(cfg["test"], "--test")
    for T, n in cfg["train"] + cfg["test"]:
        mqar_batch(1, T, n, cfg["vocab"])  # refuse a setting the vocabulary cannot hold before any training
    return cfg


def _run_mqar(args, device, data):
    cfg = _mqar_config(args)
    names = _names(args.variants, VARIANTS, "--variants")
    start = time.monotonic()
    end = math.inf if cfg["budget"] is None else start + cfg["budget"]
    eval_sets = {}
    for part, offset in (("val", 1), ("test", 2)):
        gen = torch.Generator(device=device).manual_seed(cfg["seed"] + offset)
        eval_sets[part] = {(T, n): mqar_batch(cfg["eval_size"], T, n, cfg["vocab"], generator=gen, device=device)
                           for T, n in cfg["test"]}
    res = data["mqar"] = dict(config=dict(cfg, train=[f"{T}x{n}" for T, n in cfg["train"]],
                                          test=[f"{T}x{n}" for T, n in cfg["test"]]), results=[])
    Tmax = max(T for T, _ in cfg["test"])
    dv = cfg["d_model"] // cfg["heads"]
    for i, name in enumerate(names):
        v = VARIANTS[name]
        row = dict(variant=name, label=v.label, kind=v.kind, spec=v.spec)
        try:
            row["state"] = state_size(v, cfg["heads"], dv, Tmax, cfg["window"])
            row["state_at"] = {f"{T}x{n}": state_size(v, cfg["heads"], dv, T, cfg["window"]) for T, n in cfg["test"]}
            deadline = time.monotonic() + (end - time.monotonic()) / (len(names) - i)
            row.update(_with_fallback(lambda c: train_mqar_variant(v, c, device=device, eval_sets=eval_sets,
                                                                   deadline=deadline), v, cfg, device, row))
        except Exception as exc:  # one variant failing (a kernel, memory) must not lose the others
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        res["results"].append(row)
        _write(data, args)
        print(f"mqar {name}: " + (row.get("error") or " ".join(f"{k}={v:.3f}" for k, v in row["best"]["test"].items())
                                  + f" (lr {row['best']['lr']:g}, {row['best']['steps']} steps)"), flush=True)


def _run_lm(args, device, data):
    cfg = _config(args, "lm", LM_FULL, LM_QUICK)
    names = _names(args.lm_variants, LM_VARIANTS, "--lm-variants")
    train_files, val_files = stdlib_split()
    train_data, val_data = read_bytes(train_files, cfg["train_bytes"]), read_bytes(val_files, cfg["val_bytes"])
    if len(train_data) <= cfg["context"] + 1:
        raise ValueError(f"the training text has {len(train_data)} bytes; --lm-context {cfg['context']} needs more")
    res = data["lm"] = dict(config=dict(cfg, stdlib=sysconfig.get_paths()["stdlib"], python=sys.version.split()[0],
                                        train_files=len(train_files), val_files=len(val_files),
                                        train_bytes_read=len(train_data), val_bytes_read=len(val_data)), results=[])
    end = math.inf if cfg["budget"] is None else time.monotonic() + cfg["budget"]
    dv = cfg["d_model"] // cfg["heads"]
    for i, name in enumerate(names):
        v = VARIANTS[name]
        row = dict(variant=name, label=v.label, kind=v.kind, spec=v.spec)
        try:
            row["state"] = state_size(v, cfg["heads"], dv, cfg["context"], cfg["window"])
            deadline = time.monotonic() + (end - time.monotonic()) / (len(names) - i)
            row.update(_with_fallback(lambda c: train_lm_variant(v, c, device=device, train_data=train_data,
                                                                 val_data=val_data, deadline=deadline),
                                      v, cfg, device, row))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        res["results"].append(row)
        _write(data, args)
        print(f"lm {name}: " + (row.get("error") or f"val {row['val_bpb']:.3f} bits/byte ({row['steps']} steps)"),
              flush=True)


def run(args: argparse.Namespace) -> int:
    """Train small models per attention variant on MQAR and a bytes LM; accuracy / bits per byte vs state."""
    for path, option in ((args.json_out, "--json"), (args.plot, "--plot")):
        if path and not Path(path).parent.is_dir():
            raise OSError(2, f"the directory {str(Path(path).parent)!r} does not exist (for {option})", path)
    _names(args.variants, VARIANTS, "--variants")
    _names(args.lm_variants, LM_VARIANTS, "--lm-variants")
    # every size is checked before any training, the LM's too
    _mqar_config(args)
    _config(args, "lm", LM_FULL, LM_QUICK)
    if torch.cuda.is_available():
        device = torch.device("cuda")
    elif args.cpu:
        device = torch.device("cpu")
    else:
        from fastattn.bench import GPUNeeded

        raise GPUNeeded("quality needs a CUDA GPU (torch.cuda.is_available() is False); pass --cpu to train on the "
                        "CPU anyway (only tiny sizes finish)")
    data = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
                command=" ".join(["fastattn", "bench", "quality", *sys.argv[3:]]) if sys.argv[1:3] == ["bench", "quality"]
                else None, quick=args.quick)
    # `timeout` sends SIGTERM: leave through finally, so what is done still gets its table and plot
    old = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        if args.task in ("mqar", "both"):
            _run_mqar(args, device, data)
        if args.task in ("lm", "both"):
            _run_lm(args, device, data)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
        _write(data, args)
        if args.plot and (data.get("mqar") or data.get("lm")):
            figure(data).savefig(args.plot, dpi=200, bbox_inches="tight")
            print(f"wrote {args.plot}")
        if data.get("mqar"):
            print("\nMQAR: test accuracy of the best learning rate (chosen on validation sets)\n" + _table_mqar(data["mqar"]))
        if data.get("lm"):
            print("\nbyte LM on the standard library: validation bits per byte\n" + _table_lm(data["lm"]))
    return 0


def _terminate(signum, frame):
    raise SystemExit(124)


def _main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()
