"""Train a tiny causal language model with its sequence split over processes (context parallelism).

Each rank holds one contiguous slice of every sequence; attention crosses the slices through
:class:`fastattn.distributed.ContextParallelAttention` (a log2 P scan of feature states per
layer, or one all-gather with ``--comm allgather``), every other layer acts token by token.
Parameter gradients are partial sums per rank and are all-reduced before the step, so the model
stays identical on every rank.

CPU (gloo), two processes::

    torchrun --standalone --nproc_per_node 2 examples/cp_train.py --steps 50

GPUs (NCCL, one GPU per process; the same script)::

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc_per_node 2 examples/cp_train.py --steps 50

Keep NVLink multicast (NVLS) off as above. ``--check`` first compares the loss and gradients of the
split model with the same model run on the whole sequence in one process.

The task: each sequence uses only two tokens of 16, drawn per sequence; a model that reads the
context gets from ln 16 = 2.77 down towards ln 2 = 0.69 per token, and the context of a rank's
first tokens lives on the ranks before it.
"""

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from fastattn.attention import FastAttention
from fastattn.distributed import ContextParallelAttention


class Block(nn.Module):
    """Pre-norm attention and MLP; the attention is context-parallel when ``parallel``."""

    def __init__(self, dim, heads, spec, comm):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.core = FastAttention.from_spec(spec, head_dim=dim // heads)
        self.cp = ContextParallelAttention(self.core, comm=comm)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, parallel):
        B, T, E = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, self.heads, E // self.heads).permute(2, 0, 3, 1, 4)
        o = (self.cp if parallel else self.core)(q, k, v)
        x = x + self.out(o.transpose(1, 2).reshape(B, T, E))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    def __init__(self, vocab, dim, heads, layers, spec, comm="scan"):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, spec, comm) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens, parallel=True):
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x, parallel)
        return self.head(x)


def batch(gen, size, length, vocab, device, alphabet=2):
    """Each sequence draws its tokens from its own random ``alphabet`` of the vocabulary."""
    letters = torch.rand(size, vocab, generator=gen).argsort(-1)[:, :alphabet]
    pick = torch.randint(0, alphabet, (size, length), generator=gen)
    return letters.gather(1, pick).to(device)


def split_loss(model, tokens, rank, world, total):
    """This rank's share of the mean next-token loss over the whole sequence (sum over ranks = the loss)."""
    T = tokens.shape[1]
    a, b = rank * T // world, (rank + 1) * T // world
    logits = model(tokens[:, a:b], parallel=True)
    # the target of the slice's last token is the next rank's first token: it is in the full batch
    targets = tokens[:, a + 1:b + 1]
    logits = logits[:, :targets.shape[1]]
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum") / total


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence, over all ranks")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--spec", default="1 + x + x**2/2")
    parser.add_argument("--comm", default="scan", choices=["scan", "allgather"],
                        help="how the states travel: log2 P point-to-point rounds, or one all-gather")
    parser.add_argument("--check", action="store_true", help="compare with the single-process model first")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial model on every rank
    vocab = 16
    model = TinyLM(vocab, dim=32, heads=2, layers=2, spec=args.spec, comm=args.comm).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)  # the same batches on every rank; each keeps its slice
    total = args.batch * (args.length - 1)

    if args.check:
        tokens = batch(gen, args.batch, args.length, vocab, device)
        loss = split_loss(model, tokens, rank, world, total)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        for g in grads:
            dist.all_reduce(g)
        dist.all_reduce(loss_sum := loss.detach().clone())
        model.zero_grad()
        logits = model(tokens[:, :-1], parallel=False)
        ref = nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), reduction="sum") / total
        ref.backward()
        gerr = max((g - p.grad).abs().max().item() for g, p in zip(grads, model.parameters()))
        model.zero_grad()
        if rank == 0:
            print(f"check: split loss {loss_sum.item():.6f}, one-process loss {ref.item():.6f}, "
                  f"max grad difference {gerr:.2e}")
        if abs(loss_sum.item() - ref.item()) > 1e-4 or gerr > 1e-4:
            raise SystemExit(f"rank {rank}: the split model differs from the one-process model")

    for step in range(args.steps):
        tokens = batch(gen, args.batch, args.length, vocab, device)
        loss = split_loss(model, tokens, rank, world, total)
        opt.zero_grad()
        loss.backward()
        # each rank holds the gradient of its share of the loss: the sum is the whole gradient
        for p in model.parameters():
            dist.all_reduce(p.grad)
        opt.step()
        dist.all_reduce(loss := loss.detach())
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {loss.item():.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
