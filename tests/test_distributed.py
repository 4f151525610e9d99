"""Context parallelism on CPU: 2, 3 and 4 gloo processes against the single-process call on the whole sequence.

Every case runs with both exchanges (comm="allgather" and comm="scan"); each is compared with the
single-process call and the two with each other. The scan's states alone are also checked against
a sequential fold, forward and gradients.

One spawn per world size runs every case; each worker writes its errors to a file and the tests
below assert on them, one test per case. A worker that raises fails the fixture with its
traceback; a worker that hangs fails it at the timeout.
"""

import os
import pathlib
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from fastattn.attention import FastAttention, fast_attention
from fastattn.distributed import ContextParallelAttention, context_parallel_attention, local_state
from fastattn.errors import KernelError

SPEC = "1 + x + x**2/2"
TIMEOUT_S = 120
# max-abs error allowed on values of size ~1; measured here: float64 <= 7e-15, float32 <= 5e-7
TOL = {torch.float64: 1e-10, torch.float32: 2e-6}

# name: (dtype, gate, normalize, gqa, lengths ("even" or "uneven"), causal, through the layer)
CASES = {
    "f64": (torch.float64, False, True, False, "even", True, False),
    "f64-gate": (torch.float64, True, True, False, "even", True, False),
    "f64-nonorm": (torch.float64, False, False, False, "even", True, False),
    "f64-gate-nonorm": (torch.float64, True, False, False, "even", True, False),
    "f64-gqa": (torch.float64, False, True, True, "even", True, False),
    "f64-uneven": (torch.float64, False, True, False, "uneven", True, False),
    "f64-gate-gqa-uneven": (torch.float64, True, True, True, "uneven", True, False),
    "f64-noncausal-uneven": (torch.float64, False, True, False, "uneven", False, False),
    "f64-layer-gate": (torch.float64, True, True, False, "uneven", True, True),
    "f32-gate": (torch.float32, True, True, False, "even", True, False),
    "f32-gqa-uneven": (torch.float32, False, True, True, "uneven", True, False),
}
# per world size; the 4-rank split has an empty slice (a rank with no token passes its zero state on)
LENGTHS = {2: {"even": [9, 9], "uneven": [5, 14]}, 3: {"even": [6, 6, 6], "uneven": [2, 13, 4]},
           4: {"even": [6, 6, 6, 6], "uneven": [7, 0, 11, 3]}}
# 3 ranks (the scan's uneven P) run a subset, inside the 4-rank spawn on the group of ranks 1, 2, 3 (so group
# ranks differ from global ones): gate, no normaliser, GQA, non-causal
WORLD_CASES = {2: list(CASES), 3: ["f64-gate-nonorm", "f64-gate-gqa-uneven", "f64-noncausal-uneven", "f32-gate"],
               4: list(CASES)}
QUANTITIES = ("o", "dq", "dk", "dv", "dg")
COMMS = ("allgather", "scan")


def _run_case(name, rank, world, group=None):
    dtype, gate, normalize, gqa, split, causal, layer = CASES[name]
    lengths = LENGTHS[world][split]
    T, B, Hk, D, DV = sum(lengths), 2, 2, 4, 5
    Hq = 2 * Hk if gqa else Hk
    gen = torch.Generator().manual_seed(list(CASES).index(name))  # the same data on every rank
    q = torch.randn(B, Hq, T, D, generator=gen, dtype=dtype)
    k = torch.randn(B, Hk, T, D, generator=gen, dtype=dtype)
    v = torch.randn(B, Hk, T, DV, generator=gen, dtype=dtype)
    # gates in [-1, 0): strong enough that a wrong decay shows
    g = -torch.rand(B, Hk, T, generator=gen, dtype=dtype) if gate else None
    do = torch.randn(B, Hq, T, DV, generator=gen, dtype=dtype)
    leaves = [q, k, v] + ([g] if gate else [])
    full = [x.clone().requires_grad_() for x in leaves]
    a, b = sum(lengths[:rank]), sum(lengths[:rank + 1])
    local = [x[..., a:b, :].clone().requires_grad_() if x.dim() == 4 else x[..., a:b].clone().requires_grad_()
             for x in leaves]
    kw = dict(normalize=normalize, enable_gqa=gqa, is_causal=causal, chunk=3, backend="torch")
    ref = fast_attention(*full[:3], SPEC, g=full[3] if gate else None, **kw)
    (ref * do).sum().backward()
    want, size = {"o": ref[..., a:b, :].detach()}, {"o": ref.abs().max().item()}
    for qty, x in zip(QUANTITIES[1:], full):
        want[qty] = x.grad[..., a:b, :] if x.dim() == 4 else x.grad[..., a:b]
        size[qty] = x.grad.abs().max().item()
    out, got = {"tokens": b - a}, {}
    for comm in COMMS:
        local = [x[..., a:b, :].clone().requires_grad_() if x.dim() == 4 else x[..., a:b].clone().requires_grad_()
                 for x in leaves]
        if layer:
            core = FastAttention.from_spec(SPEC, head_dim=D, head_dim_v=DV, causal=causal, normalize=normalize,
                                         chunk=3, backend="torch")
            o = ContextParallelAttention(core, group=group, comm=comm)(*local[:3], g=local[3] if gate else None,
                                                                      enable_gqa=gqa)
        else:
            o = context_parallel_attention(*local[:3], SPEC, g=local[3] if gate else None, comm=comm, group=group,
                                           **kw)
        (o * do[..., a:b, :]).sum().backward()
        got[comm] = {"o": o.detach(), **{qty: x.grad for qty, x in zip(QUANTITIES[1:], local)}}
    for qty in want:
        for comm in COMMS:
            err = (got[comm][qty] - want[qty]).abs().max().item() if b > a else 0.0
            out[(comm, qty)] = (err, size[qty])
        between = (got["scan"][qty] - got["allgather"][qty]).abs().max().item() if b > a else 0.0
        out[("scan-vs-allgather", qty)] = (between, size[qty])
    return out


def _fold_reference(xs, Ls, reverse):
    """Exclusive folds of every rank, sequentially: E_r = exp(L_{r-1}) E_{r-1} + x_{r-1} (or from the end)."""
    order = list(range(len(xs)))[::-1] if reverse else list(range(len(xs)))
    acc, out = torch.zeros_like(xs[0]), [None] * len(xs)
    for r in order:
        out[r] = acc
        acc = torch.exp(Ls[r])[:, None] * acc + xs[r]
    return out


def _run_scan_states(rank, world, group=None):
    """exclusive_scan through _ScanStates against a sequential fold: values, dx and dL from a random upstream.

    ``rank`` and ``world`` are those of ``group`` (default: the world group).
    """
    from fastattn.distributed.context_parallel import _ScanStates

    out = {}
    for reverse in (False, True):
        gen = torch.Generator().manual_seed(7 + reverse)
        R, N = 3, 5
        xs = [torch.randn(R, N, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(world)]
        Ls = [(-2 * torch.rand(R, generator=gen, dtype=torch.float64)).requires_grad_() for _ in range(world)]
        ws = [torch.randn(R, N, generator=gen, dtype=torch.float64) for _ in range(world)]
        ref = _fold_reference(xs, Ls, reverse)
        # the last rank's x (reverse: the first's) enters no E: its gradient is zero, not None
        sum((e * w).sum() for e, w in zip(ref, ws)).backward()
        for leaf in xs + Ls:
            leaf.grad = torch.zeros_like(leaf) if leaf.grad is None else leaf.grad
        x, L = xs[rank].detach().clone().requires_grad_(), Ls[rank].detach().clone().requires_grad_()
        extra = torch.tensor([float(rank + 1)], dtype=torch.float64)
        E, tokens = _ScanStates.apply(x, L, extra, group or dist.group.WORLD, reverse)
        (E * ws[rank]).sum().backward()
        others = range(rank + 1, world) if reverse else range(rank)
        out[("E", reverse)] = (E - ref[rank]).abs().max().item()
        out[("dx", reverse)] = (x.grad - xs[rank].grad).abs().max().item()
        out[("dL", reverse)] = (L.grad - Ls[rank].grad).abs().max().item()
        out[("tokens", reverse)] = (tokens.item(), float(sum(j + 1 for j in others)))
    return out


def _worker(rank, world, store_path, out_dir):
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    # up to 4 workers share the test machine's cores: more threads each only contend
    torch.set_num_threads(1)
    try:
        results = {name: _run_case(name, rank, world) for name in WORLD_CASES[world]}
        results["scan-states"] = _run_scan_states(rank, world)
        if world == 4:
            # a group whose ranks are not the global ones: the scan's peers go through get_global_rank
            sub = dist.new_group([1, 2, 3])
            if rank > 0:
                results["sub3"] = {name: _run_case(name, rank - 1, 3, sub) for name in WORLD_CASES[3]}
                results["sub3"]["scan-states"] = _run_scan_states(rank - 1, 3, sub)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


def _raise_on_rank_1(rank, world, store_path, out_dir):
    if rank == 1:
        raise ValueError("worker 1 broke")
    time.sleep(60)


def _sleep(rank, world, store_path, out_dir):
    time.sleep(60)


def _spawn(world, tmp_path, worker=_worker, timeout_s=TIMEOUT_S):
    """Run ``worker`` on ``world`` processes; return the per-rank result files' contents."""
    ctx = mp.start_processes(worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world,
                             join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    # join raises ProcessRaisedException (with the worker's traceback) if a worker fails
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"workers ({world} ranks) did not finish within {timeout_s} s")
    return [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]


def _errors(per_rank, world):
    """Every comparison of the per-rank results of one group over the tolerance, as readable lines."""
    bad = []
    for case in WORLD_CASES[world]:
        dtype, gate = CASES[case][:2]
        ranks = [res[case] for res in per_rank]
        assert [r["tokens"] for r in ranks] == LENGTHS[world][CASES[case][4]]
        for qty in QUANTITIES[:4] + (("dg",) if gate else ()):
            size = max(r[("scan", qty)][1] for r in ranks)
            assert size > 0.1, f"{case} {qty}: the reference is ~0 ({size:.3g}), the comparison would be empty"
            for comm in COMMS + ("scan-vs-allgather",):
                err = max(r[(comm, qty)][0] for r in ranks)
                if not err <= TOL[dtype] * max(1.0, size):
                    bad.append(f"{world} ranks, {case} {qty} {comm}: max abs error {err:.3g} (reference max "
                               f"{size:.3g}, tol {TOL[dtype]:g})")
    for rank, res in enumerate(per_rank):
        st = res["scan-states"]
        for reverse in (False, True):
            got, want = st[("tokens", reverse)]
            assert got == want, f"{world} ranks, rank {rank} reverse={reverse}: scanned {got} tokens, expected {want}"
            for qty in ("E", "dx", "dL"):
                if not st[(qty, reverse)] <= 1e-12:
                    bad.append(f"{world} ranks, scanned states rank {rank} reverse={reverse} {qty}: error "
                               f"{st[(qty, reverse)]:.3g}")
    return bad


# one test per spawn, so that under xdist each spawn runs once, on one worker; the 4-rank spawn also
# runs the 3-rank cases on the group of ranks 1, 2, 3
@pytest.mark.parametrize("world", [2, 4])
def test_context_parallel_matches_single_process(world, tmp_path):
    per_rank = _spawn(world, tmp_path)
    bad = _errors(per_rank, world)
    if world == 4:
        bad += _errors([res["sub3"] for res in per_rank[1:]], 3)
    assert not bad, "\n".join(bad)


def test_a_failing_worker_fails_with_its_traceback(tmp_path):
    with pytest.raises(mp.ProcessRaisedException, match="worker 1 broke"):
        _spawn(2, tmp_path, _raise_on_rank_1)


def test_a_hanging_worker_fails_at_the_timeout(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="did not finish within 2 s"):
        _spawn(2, tmp_path, _sleep, timeout_s=2)


def test_local_state_is_the_final_state_of_a_prefill():
    gen = torch.Generator().manual_seed(0)
    k = torch.randn(1, 2, 11, 4, generator=gen, dtype=torch.float64)
    v = torch.randn(1, 2, 11, 3, generator=gen, dtype=torch.float64)
    g = -torch.rand(1, 2, 11, generator=gen, dtype=torch.float64)
    S, z, L = local_state(k, v, SPEC, g=g)
    _, st = fast_attention(k, k, v, SPEC, g=g, output_final_state=True)
    torch.testing.assert_close(S, st.S, rtol=0, atol=1e-12)
    torch.testing.assert_close(z, st.z, rtol=0, atol=1e-12)
    torch.testing.assert_close(L, g.sum(-1), rtol=0, atol=1e-12)


def test_refuses_without_a_process_group():
    x = torch.randn(1, 1, 4, 4)
    with pytest.raises(KernelError, match="init_process_group"):
        context_parallel_attention(x, x, x, SPEC)


def test_refuses_an_unknown_exchange():
    core = FastAttention.from_spec(SPEC, head_dim=4)
    with pytest.raises(KernelError, match="comm='ring'; use 'allgather' or 'scan'"):
        ContextParallelAttention(core, comm="ring")


def test_the_torchrun_example_trains_and_matches_one_process(tmp_path):
    root = pathlib.Path(__file__).resolve().parents[1]
    # --standalone picks a free port, so two xdist workers never collide
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(root / "examples" / "cp_train.py"), "--steps", "3", "--length", "32", "--check"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "check: split loss" in run.stdout and "step    2" in run.stdout, run.stdout


# -- the communication model's arithmetic ------------------------------------------------------------------
def test_comm_estimate_counts_messages_and_bytes():
    from fastattn.distributed import comm_estimate

    B, H, F, DV = 2, 3, 45, 8
    state = (B * H * (F * DV + F + 1) + 2) * 4  # S, z, log decay in fp32, and the 2-float length
    for P, ring, rounds in ((2, 1, 1), (3, 2, 2), (4, 3, 2), (5, 4, 3), (8, 7, 3), (64, 63, 6)):
        e = comm_estimate(P, 1000, B, H, F, DV, bandwidth_GBps=2.0, latency_us=5.0)
        assert e.state_bytes == state
        assert (e.allgather_bytes, e.scan_bytes) == (2 * ring * state, 2 * rounds * state), P
        message_ms = 5.0e-3 + state / 2.0e9 * 1e3
        assert e.allgather_ms == pytest.approx(2 * ring * message_ms, rel=1e-12), P
        assert e.scan_ms == pytest.approx(2 * rounds * message_ms, rel=1e-12), P
    # one rank exchanges nothing
    one = comm_estimate(1, 10, B, H, F, DV, bandwidth_GBps=1.0, latency_us=1.0)
    assert (one.allgather_ms, one.scan_ms, one.allgather_bytes) == (0.0, 0.0, 0)


def test_cp_table_is_compute_over_ranks_plus_the_estimate():
    from fastattn.distributed import comm_estimate, cp_table, format_cp_table

    rows = cp_table(20.0, 100.0, 3.0, ranks=(8, 64), tokens=(2**20, 2**24), B=1, H=16, F=2145, DV=64)
    assert [(r.P, r.T) for r in rows] == [(8, 2**20), (8, 2**24), (64, 2**20), (64, 2**24)]
    for r in rows:
        assert r.compute_ms == pytest.approx(20.0 * 16 * r.T / r.P * 1e-6, rel=1e-12)
        e = comm_estimate(r.P, r.T, 1, 16, 2145, 64, bandwidth_GBps=100.0, latency_us=3.0)
        assert (r.allgather_ms, r.scan_ms) == (e.allgather_ms, e.scan_ms)
        assert r.allgather_share == pytest.approx(r.allgather_ms / r.compute_ms)
    text = format_cp_table(rows).splitlines()
    assert len(text) == 2 + len(rows)
    assert text[2].startswith("| 8 | 1M | 128K | 41.9 | ")  # 20 ns x 16 heads x 131072 tokens


@pytest.mark.parametrize("kwargs, match", [
    (dict(bandwidth_GBps=0.0, latency_us=1.0), "bandwidth_GBps=0.0 must be a finite number > 0"),
    (dict(bandwidth_GBps=float("nan"), latency_us=1.0), "bandwidth_GBps=nan"),
    (dict(bandwidth_GBps=1.0, latency_us=-1.0), "latency_us=-1.0 must be a finite number >= 0"),
])
def test_comm_estimate_refuses_unmeasurable_constants(kwargs, match):
    from fastattn.distributed import comm_estimate

    with pytest.raises(ValueError, match=match):
        comm_estimate(8, 2**20, 1, 16, 2145, 64, **kwargs)
    with pytest.raises(ValueError, match="P=0 must be an integer >= 1"):
        comm_estimate(0, 2**20, 1, 16, 2145, 64, bandwidth_GBps=1.0, latency_us=0.0)
