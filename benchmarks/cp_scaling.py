"""Context-parallel scaling of fastattn on two GPUs: weak and strong scaling, the state exchange alone, bf16 equality.

Two GPUs, one process each (NCCL)::

    NCCL_NVLS_ENABLE=0 torchrun --standalone --nproc_per_node 2 benchmarks/cp_scaling.py --json cp.json

One GPU, the single-GPU rows only::

    python benchmarks/cp_scaling.py --single

Shape: bf16, causal, B = 1, H = 16 (q and kv heads), D = DV = 64, f = 1 + x + x**2/2 (F = 2145).
Every time is forward + backward with a random upstream gradient, the median of ``--reps`` after
``--warmup`` calls, CUDA events between two barriers; a two-GPU time is the slower rank's median.

* ``1 GPU @ T``: :func:`fastattn.attention.fast_attention` on the whole T (no state in).
* ``2 GPU @ 2T`` (weak: each GPU holds T) and ``2 GPU @ T`` (strong: each holds T/2):
  :func:`fastattn.distributed.context_parallel_attention`. Weak efficiency = t1(T) / t2(2T);
  strong efficiency = t1(T) / (2 t2(T)).
* ``exchange``: :func:`fastattn.distributed.exchange_states` alone (forward + backward) for each
  ``comm``, with the bytes a rank receives.
* ``--check``: the two-GPU output and gradients against the one-GPU call on the same bf16 inputs
  (``--check-tokens`` in all), gathered to rank 0: max-abs and relative RMS error.

The local call of a rank carries an initial state; fastattn routes such a call to the torch path
until the Triton kernels take a state. The script probes which route the local call takes and
prints it. A size whose first call takes longer than ``--limit-s`` is not repeated, larger sizes of
that kind are skipped, and everything after ``--budget-s`` is skipped; all of it is printed.
Nothing here runs at import. ``--device cpu`` (gloo, wall clock) is a smoke test of the script.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from fastattn.attention import fast_attention
from fastattn.attention.state import State, state_dtype
from fastattn.distributed import context_parallel_attention, exchange_states
from fastattn.errors import KernelError
from fastattn.kernels.poly import choose_backend, polynomial



def tokens(T):
    """16384 -> '16K'."""
    return f"{T // 1024}K" if T % 1024 == 0 else str(T)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--single", action="store_true", help="one process, one GPU: the single-GPU rows only")
    p.add_argument("--sizes", default="16384,65536,262144", help="tokens per GPU, comma-separated")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--spec", default="1 + x + x**2/2")
    p.add_argument("--comm", default="scan", choices=["allgather", "scan"], help="exchange of the CP rows and --check")
    p.add_argument("--exchange-comms", default="allgather,scan", help="exchanges timed alone, comma-separated")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--limit-s", type=float, default=20.0, help="a first call slower than this stops the size")
    p.add_argument("--budget-s", type=float, default=330.0, help="skip everything after this many seconds")
    p.add_argument("--check", action="store_true", help="bf16 equality of 2-GPU CP and the 1-GPU call")
    p.add_argument("--check-tokens", type=int, default=65536)
    p.add_argument("--json", default=None, help="write the results here (rank 0)")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: gloo smoke test")
    return p.parse_args(argv)


class Run:
    """Process group, device, clock and the collective decisions of one benchmark run."""

    def __init__(self, args):
        self.args, self.t0 = args, time.monotonic()
        self.cuda = args.device == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("no CUDA device: pass --device cpu for a smoke test")
        self.distributed = not args.single
        local = int(os.environ.get("LOCAL_RANK", 0))
        self.device = torch.device("cuda", local) if self.cuda else torch.device("cpu")
        if self.cuda:
            torch.cuda.set_device(self.device)
        if self.distributed:
            # NVLink multicast (NVLS) stays off on these machines
            os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
            kw = dict(backend="nccl" if self.cuda else "gloo", timeout=timedelta(seconds=240))
            try:
                # a device_id creates the communicator now, so the first send/recv needs no group-wide call
                dist.init_process_group(**kw, device_id=self.device if self.cuda else None)
            except TypeError:
                dist.init_process_group(**kw)
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world = 0, 1
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.skipped: list[str] = []

    def say(self, *a):
        if self.rank == 0:
            print(*a, flush=True)

    def elapsed(self):
        return time.monotonic() - self.t0

    def agree_max(self, value: float) -> float:
        """The largest ``value`` over the ranks, so that every rank takes the same branch."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.item()

    def barrier(self):
        if self.distributed:
            dist.barrier()
        if self.cuda:
            torch.cuda.synchronize()

    def time_ms(self, fn):
        """Milliseconds of one ``fn()``: CUDA events (wall clock on CPU), after a barrier."""
        self.barrier()
        if not self.cuda:
            t = time.perf_counter()
            fn()
            return (time.perf_counter() - t) * 1e3
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)

    def measure(self, label, fn):
        """{ms, first_s} (median over ranks' medians, max over ranks) or None when skipped (the reason printed)."""
        a = self.args
        if self.agree_max(self.elapsed()) > a.budget_s:
            self.skipped.append(f"{label}: over the {a.budget_s:.0f} s budget")
            return None
        try:
            self.barrier()
            t = time.monotonic()
            fn()
            self.barrier()
            first = time.monotonic() - t
            failed = 0.0
        except (torch.cuda.OutOfMemoryError, MemoryError):
            first, failed = math.inf, 1.0
            if self.cuda:
                torch.cuda.empty_cache()
        if self.agree_max(failed):
            self.skipped.append(f"{label}: out of memory")
            return {"oom": True}
        first = self.agree_max(first)
        if first > a.limit_s:
            self.skipped.append(f"{label}: first call {first:.1f} s > {a.limit_s:g} s, not repeated")
            return {"first_s": first, "slow": True}
        warmup, reps = max(a.warmup - 1, 0), a.reps
        # a slow size gets fewer repetitions rather than running past the budget (the same on every rank)
        left = a.budget_s - self.agree_max(self.elapsed())
        if first * (warmup + reps) > left:
            warmup, reps = 0, max(1, min(reps, int(left / max(first, 1e-9)) - 1))
        for _ in range(warmup):
            fn()
        times = [self.time_ms(fn) for _ in range(reps)]
        ms = self.agree_max(statistics.median(times))
        self.say(f"  {label}: {ms:.2f} ms (median of {reps}, first call {first:.2f} s)")
        return {"ms": ms, "first_s": first, "reps": reps}


def inputs(run, T, *, seed=None):
    """q, k, v, do [B, H, T, D] in the run's dtype on its device; seeded on the CPU when ``seed`` is given."""
    a = run.args
    shape = (a.batch, a.heads, T, a.dim)
    if seed is None:
        xs = [torch.randn(shape, device=run.device, dtype=run.dtype) for _ in range(4)]
    else:
        gen = torch.Generator().manual_seed(seed)
        xs = [torch.randn(shape, generator=gen).to(run.device, run.dtype) for _ in range(4)]
    return [x.requires_grad_() for x in xs[:3]] + [xs[3]]


def fwd_bwd(call, q, k, v, do):
    def fn():
        for x in (q, k, v):
            x.grad = None
        call(q, k, v).backward(do)
    return fn


def local_route(run):
    """The route fastattn's "auto" takes for a local CP call (it carries an initial state): 'triton' or 'torch'."""
    a = run.args
    q = torch.randn(1, 1, 16, a.dim, device=run.device, dtype=run.dtype)
    if choose_backend(q, "auto") != "triton":
        return "torch", "not a CUDA tensor"
    F = polynomial(a.spec).feature_dim(a.dim)
    work = state_dtype(run.dtype)
    st = State(torch.zeros(1, 1, F, a.dim, device=run.device, dtype=work),
               torch.zeros(1, 1, F, device=run.device, dtype=work),
               torch.zeros(1, dtype=torch.int64, device=run.device))
    try:
        fast_attention(q, q, q, a.spec, initial_state=st, backend="triton")
    except KernelError as e:
        return "torch", str(e).split(";")[0]
    except Exception as e:  # a kernel that fails to build here must not stop the run: the CP rows will say
        return "unknown", f"the Triton call with a state raised {type(e).__name__}: {str(e)[:200]}"
    return "triton", "the Triton kernels take an initial_state"


def state_bytes(a, F):
    """Bytes of one rank's packed state: S, z, log decay (fp32) and the 2-float length."""
    return (a.batch * a.heads * (F * a.dim + F + 1) + 2) * 4


def bench_exchange(run, F):
    """exchange_states alone, forward + backward, for each comm: ms and the bytes a rank receives.

    Also at a one-feature state (B1 H1 F1 DV1, 24 bytes): that time over the messages is the latency.
    """
    a = run.args
    out = {}
    messages = {"allgather": 2 * (run.world - 1), "scan": 2 * math.ceil(math.log2(run.world))}
    work = state_dtype(run.dtype)
    for comm in [c for c in a.exchange_comms.split(",") if c]:
        for tiny in (False, True):
            B, H, Fs, DV = (1, 1, 1, 1) if tiny else (a.batch, a.heads, F, a.dim)
            S = torch.randn(B, H, Fs, DV, device=run.device, dtype=work, requires_grad=True)
            z = torch.randn(B, H, Fs, device=run.device, dtype=work, requires_grad=True)
            L = torch.zeros(B, H, device=run.device, dtype=work, requires_grad=True)
            dS, dz = torch.randn_like(S), torch.randn_like(z)

            def fn():
                st = exchange_states(S, z, L, 4096, comm=comm)
                torch.autograd.backward([st.S, st.z], [dS, dz])

            res = run.measure(f"exchange {comm}{' (1-feature state)' if tiny else ''}", fn)
            if tiny:
                if res is not None and res.get("ms") is not None:
                    out[comm]["latency_us"] = res["ms"] * 1e3 / messages[comm]
                continue
            if res is not None:
                res["bytes_in_per_rank_fwd_bwd"] = messages[comm] * state_bytes(a, F)
                if res.get("ms"):
                    res["GBps"] = res["bytes_in_per_rank_fwd_bwd"] / (res["ms"] * 1e-3) / 1e9
            out[comm] = res or {}
    return out


def check_equality(run):
    """Two-GPU CP against the one-GPU call on the same bf16 inputs of ``--check-tokens`` tokens."""
    a = run.args
    T = a.check_tokens
    if T % run.world:
        raise SystemExit(f"--check-tokens {T} must be a multiple of the {run.world} ranks")
    q, k, v, do = inputs(run, T, seed=0)
    n = T // run.world
    sl = slice(run.rank * n, (run.rank + 1) * n)
    mine = [x[:, :, sl].detach().clone().requires_grad_() for x in (q, k, v)]
    o = context_parallel_attention(*mine, a.spec, comm=a.comm)
    o.backward(do[:, :, sl])
    parts = {"o": o.detach(), "dq": mine[0].grad, "dk": mine[1].grad, "dv": mine[2].grad}
    gathered = {}
    for name, x in parts.items():
        bufs = [torch.empty_like(x) for _ in range(run.world)]
        dist.all_gather(bufs, x.contiguous())
        gathered[name] = torch.cat(bufs, 2)
    out = {}
    if run.rank == 0:
        ref = fast_attention(q, k, v, a.spec)
        ref.backward(do)
        want = {"o": ref.detach(), "dq": q.grad, "dk": k.grad, "dv": v.grad}
        for name in parts:
            d = (gathered[name].float() - want[name].float())
            rms = want[name].float().pow(2).mean().sqrt().item()
            out[name] = {"max_abs": d.abs().max().item(), "rel_rms": d.pow(2).mean().sqrt().item() / max(rms, 1e-30),
                         "ref_max": want[name].float().abs().max().item()}
    run.barrier()
    return out


def main(argv=None):
    a = parse_args(argv)
    run = Run(a)
    sizes = [int(s) for s in a.sizes.split(",") if s]
    F = polynomial(a.spec).feature_dim(a.dim)
    route, why = local_route(run)
    info = {"device": torch.cuda.get_device_name(run.device) if run.cuda else "cpu", "world": run.world,
            "dtype": str(run.dtype), "B": a.batch, "H": a.heads, "D": a.dim, "DV": a.dim, "F": F, "spec": a.spec,
            "comm": a.comm, "local_route": route, "local_route_why": why, "warmup": a.warmup, "reps": a.reps,
            "torch": torch.__version__, "state_bytes_per_rank": state_bytes(a, F)}
    run.say(f"cp_scaling: {info['device']} x{run.world}, {info['dtype']}, causal, B{a.batch} H{a.heads} "
            f"D{a.dim} F{F}, f = {a.spec}, comm={a.comm}")
    run.say(f"local CP call route (backend='auto' with an initial_state): {route} ({why})")
    run.say(f"state per rank: {state_bytes(a, F) / 1e6:.2f} MB")
    results = {"info": info, "single": {}, "weak": {}, "strong": {}, "exchange": {}, "check": None}

    if run.distributed and run.world > 1:
        run.say("exchange of the states alone:")
        results["exchange"] = bench_exchange(run, F)
        if a.check:
            run.say(f"{info['dtype']} equality at {a.check_tokens} tokens, {run.world} GPUs vs 1:")
            results["check"] = check_equality(run)
            for name, c in (results["check"] or {}).items():
                run.say(f"  {name}: max-abs {c['max_abs']:.3g}  rel-RMS {c['rel_rms']:.3g}")

    stop = {"single": False, "weak": False, "strong": False}
    for T in sizes:
        run.say(f"T = {T} tokens per GPU:")
        # one GPU at T, on rank 0 while the others wait at the barrier
        if not stop["single"]:
            q, k, v, do = inputs(run, T) if run.rank == 0 else (None,) * 4
            fn = fwd_bwd(lambda q, k, v: fast_attention(q, k, v, a.spec), q, k, v, do) if run.rank == 0 else \
                (lambda: None)
            res = run.measure(f"1 GPU @ {T}", fn)
            results["single"][T] = res
            stop["single"] = res is None or "ms" not in res
            del q, k, v, do
        if not run.distributed or run.world == 1:
            continue
        for kind, per_gpu in (("weak", T), ("strong", T // run.world)):
            if stop[kind]:
                run.skipped.append(f"{kind} @ {T}: a smaller size was too slow or did not fit")
                continue
            q, k, v, do = inputs(run, per_gpu)
            fn = fwd_bwd(lambda q, k, v: context_parallel_attention(q, k, v, a.spec, comm=a.comm), q, k, v, do)
            total = per_gpu * run.world
            res = run.measure(f"{run.world} GPU @ {total} ({kind}, {per_gpu} per GPU)", fn)
            results[kind][T] = res
            stop[kind] = res is None or "ms" not in res
            del q, k, v, do
        if run.cuda:
            torch.cuda.empty_cache()

    rows = table(results, sizes, run.world)
    run.say("\n".join(rows))
    for s in run.skipped:
        run.say(f"skipped: {s}")
    results["skipped"], results["table"] = run.skipped, rows
    if a.json and run.rank == 0:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
    if run.distributed:
        dist.destroy_process_group()
    return 0


def table(results, sizes, world):
    """The markdown table: one row per T per GPU, and the exchange and equality lines."""
    def ms(cell):
        return None if cell is None else cell.get("ms")

    def fmt(x, cell=None):
        if x is not None:
            return f"{x:.2f}"
        if cell and cell.get("oom"):
            return "OOM"
        return f"slow ({cell['first_s']:.0f} s)" if cell and cell.get("slow") else "—"

    P = world
    if P == 1:
        rows = ["", "| T | 1 GPU (ms) |", "|---|---|"]
        rows += [f"| {tokens(T)} | {fmt(ms(results['single'].get(T)), results['single'].get(T))} |" for T in sizes]
        sizes = [T for T in sizes if ms(results["single"].get(T))]
        if sizes:
            T = sizes[-1]
            ns = ms(results["single"][T]) * 1e6 / (results["info"]["B"] * results["info"]["H"] * T)
            rows.append(f"cost model: ns_per_token_head = {ns:.2f} (1 GPU @ {tokens(T)})")
        return rows
    rows = ["", f"| T / GPU | 1 GPU @ T (ms) | {P} GPU @ {P}T weak (ms) | weak eff | {P} GPU @ T strong (ms) "
                "| strong eff |", "|---|---|---|---|---|---|"]
    for T in sizes:
        t1, tw, ts = ms(results["single"].get(T)), ms(results["weak"].get(T)), ms(results["strong"].get(T))
        weak = t1 / tw if t1 and tw else None
        strong = t1 / (P * ts) if t1 and ts else None
        cells = [results[kind].get(T) for kind in ("single", "weak", "strong")]
        rows.append(f"| {tokens(T)} | {fmt(t1, cells[0])} | {fmt(tw, cells[1])} | {fmt(weak)} | {fmt(ts, cells[2])} "
                    f"| {fmt(strong)} |")
    for comm, c in (results["exchange"] or {}).items():
        if c and c.get("ms") is not None:
            lat = f", {c['latency_us']:.0f} us per message" if c.get("latency_us") is not None else ""
            rows.append(f"exchange {comm}: {c['ms']:.3f} ms fwd+bwd, {c['bytes_in_per_rank_fwd_bwd'] / 1e6:.2f} MB "
                        f"in per rank, {c['GBps']:.1f} GB/s{lat}")
    info = results["info"]
    measured = [(T, ms(results["single"].get(T))) for T in sizes if ms(results["single"].get(T))]
    if measured:
        T, t1 = measured[-1]
        ns = t1 * 1e6 / (info["B"] * info["H"] * T)
        rows.append(f"cost model: ns_per_token_head = {ns:.2f} (1 GPU @ {tokens(T)}; "
                    "fastattn.distributed.cp_table(ns, GBps, latency_us))")
    for name, c in (results["check"] or {}).items():
        rows.append(f"check {name}: max-abs {c['max_abs']:.3g}, rel-RMS {c['rel_rms']:.3g}")
    rows.append(f"local route: {results['info']['local_route']}")
    return rows


if __name__ == "__main__":
    sys.exit(main())
