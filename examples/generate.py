"""Generation with a carried state: a tiny byte-level LM on FastMultiheadAttention, decoding in O(1) per token.

A prompt is prefilled in one call (``use_cache=True`` returns each layer's State: the feature sums
S = sum psi(k) v^T and z = sum psi(k)); every next token is one call of length 1 that reads and
updates those sums, so a step costs the same at context 10 or 100,000. Full recomputation (the whole
prefix through the model for every new token) gives the same tokens, at O(T) per step:

    python examples/generate.py --steps 200 --new 200

trains for ``--steps`` on this file's own bytes (CPU, a minute), then generates greedily both ways,
checks the tokens agree and prints the time per token of each.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from fastattn.attention import FastMultiheadAttention


class Block(nn.Module):
    def __init__(self, dim, heads, kv_heads, spec):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = FastMultiheadAttention(dim, heads, spec, num_kv_heads=kv_heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, state=None, use_cache=False):
        a, state = self.attn(self.ln1(x), past_state=state, use_cache=use_cache)
        x = x + a
        return x + self.mlp(self.ln2(x)), state


class TinyLM(nn.Module):
    """Byte-level causal LM: embeddings with learned positions, ``layers`` blocks, a tied output head."""

    def __init__(self, dim=64, heads=4, kv_heads=2, layers=2, spec="1 + x + x**2/2", max_len=4096):
        super().__init__()
        self.tok, self.pos = nn.Embedding(256, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, kv_heads, spec) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        # the output head is tied to the embedding: unit-variance rows would start at a loss of ~40
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, ids, states=None, offset=0, use_cache=False):
        """Logits [B, T, 256]; with ``use_cache`` also the list of per-layer states after these tokens."""
        pos = torch.arange(offset, offset + ids.shape[1], device=ids.device)
        x = self.tok(ids) + self.pos(pos)
        new = []
        for i, block in enumerate(self.blocks):
            x, st = block(x, None if states is None else states[i], use_cache)
            new.append(st)
        logits = self.ln(x) @ self.tok.weight.T
        return (logits, new) if use_cache else logits


@torch.no_grad()
def generate(model, prompt, new_tokens, *, use_cache=True):
    """Greedy continuation of ``prompt`` [B, T0] by ``new_tokens`` tokens: with the carried states, or by
    recomputing the whole prefix each step."""
    ids = prompt
    if not use_cache:
        for _ in range(new_tokens):
            nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
        return ids
    logits, states = model(ids, use_cache=True)
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        logits, states = model(nxt, states, offset=ids.shape[1] - 1, use_cache=True)
    return ids


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="training steps on this file's bytes")
    ap.add_argument("--new", type=int, default=200, help="tokens to generate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    data = torch.tensor(list(Path(__file__).read_bytes()), dtype=torch.long)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        starts = torch.randint(0, len(data) - 129, (16,))
        batch = torch.stack([data[s:s + 129] for s in starts])
        loss = nn.functional.cross_entropy(model(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}")
    model.eval()
    prompt = data[:64][None]
    timed = {}
    for cache in (True, False):
        t = time.perf_counter()
        timed[cache] = (generate(model, prompt, args.new, use_cache=cache), time.perf_counter() - t)
    same = torch.equal(timed[True][0], timed[False][0])
    print(bytes(timed[True][0][0].tolist()).decode("utf-8", "replace"))
    print(f"carried state: {1e3 * timed[True][1] / args.new:.2f} ms/token; full recomputation: "
          f"{1e3 * timed[False][1] / args.new:.2f} ms/token; same tokens: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
