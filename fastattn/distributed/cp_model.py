"""How long context parallelism spends exchanging states, and when the local compute hides it.

One rank's state per layer is S [B, H_kv, F, DV], z [B, H_kv, F] and the log decay [B, H_kv] in
fp32, plus the 2-float slice length: ``state_bytes = (B·H·(F·DV + F + 1) + 2)·4``. With α the
latency of one message and β the bandwidth a rank receives at, forward + backward (causal):

* all-gather (ring): the forward receives P - 1 states in P - 1 steps, the backward's
  reduce-scatter as many: ``2 (P - 1) (α + state_bytes / β)``;
* scan (Hillis–Steele): ceil(log2 P) rounds of one state in and one out, the same again in the
  backward: ``2 ceil(log2 P) (α + state_bytes / β)``.

The local attention is linear in its T/P tokens: ``compute = ns_per_token_head · B·H·T/P``. Both
constants are measurements to pass in (``benchmarks/cp_scaling.py`` prints the exchange's GB/s and
the one-GPU fwd+bwd time; ns per token and head = ms · 1e6 / (B·H·T)); nothing here is overlapped.

>>> e = comm_estimate(8, 2**20, 1, 16, 2145, 64, bandwidth_GBps=50.0, latency_us=0.0)
>>> round(e.state_bytes / 1e6, 2), round(e.allgather_ms, 2), round(e.scan_ms, 2)
(8.92, 2.5, 1.07)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CommEstimate", "comm_estimate", "CPRow", "cp_table", "format_cp_table"]

#: The default grid of :func:`cp_table`: 8 to 64 GPUs, 1M to 16M tokens.
RANKS = (8, 16, 32, 64)
TOKENS = (2**20, 2**21, 2**22, 2**23, 2**24)


def _check_int(value, name, least=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name}={value!r} must be an integer >= {least}")


def _check_rate(value, name, *, zero_ok):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"{name}={value!r} must be a finite number {'>= 0' if zero_ok else '> 0'} (a measured value)")


@dataclass(frozen=True)
class CommEstimate:
    """Forward + backward exchange time of one layer at P ranks (causal), both ways."""

    P: int
    T: int
    state_bytes: int
    #: bytes one rank receives, forward + backward
    allgather_bytes: int
    scan_bytes: int
    allgather_ms: float
    scan_ms: float

    @property
    def tokens_per_rank(self) -> float:
        return self.T / self.P


def comm_estimate(P: int, T: int, B: int, H: int, F: int, DV: int, *, bandwidth_GBps: float,
                  latency_us: float) -> CommEstimate:
    """Predicted forward + backward state exchange of one causal CP layer, all-gather and scan.

    Parameters
    ----------
    P : int
        Ranks.
    T : int
        Tokens of the whole sequence (the exchange does not depend on it; it is kept for the rows).
    B, H, F, DV : int
        Batch, key/value heads, features, value dim.
    bandwidth_GBps : float
        Bytes a rank receives per second, in GB/s (1e9), as measured.
    latency_us : float
        Fixed cost of one message (one ring step or one scan round), in microseconds.

    Returns
    -------
    CommEstimate

    Examples
    --------
    >>> e = comm_estimate(64, 2**24, 1, 16, 2145, 64, bandwidth_GBps=50.0, latency_us=10.0)
    >>> e.allgather_bytes == 2 * 63 * e.state_bytes, e.scan_bytes == 2 * 6 * e.state_bytes
    (True, True)
    >>> round(e.allgather_ms, 2), round(e.scan_ms, 3)     # 126 and 12 messages of 8.92 MB + 10 us
    (23.75, 2.262)
    """
    for v, n in ((P, "P"), (T, "T"), (B, "B"), (H, "H"), (F, "F"), (DV, "DV")):
        _check_int(v, n)
    _check_rate(bandwidth_GBps, "bandwidth_GBps", zero_ok=False)
    _check_rate(latency_us, "latency_us", zero_ok=True)
    state = (B * H * (F * DV + F + 1) + 2) * 4
    ring, rounds = P - 1, math.ceil(math.log2(P))
    message_ms = latency_us * 1e-3 + state / (bandwidth_GBps * 1e9) * 1e3
    return CommEstimate(P, T, state, 2 * ring * state, 2 * rounds * state, 2 * ring * message_ms,
                        2 * rounds * message_ms)


@dataclass(frozen=True)
class CPRow:
    """One row of :func:`cp_table`: per-rank compute and the exchange, in ms, forward + backward."""

    P: int
    T: int
    compute_ms: float
    allgather_ms: float
    scan_ms: float

    @property
    def allgather_share(self) -> float:
        """Exchange time over compute time (all-gather)."""
        return self.allgather_ms / self.compute_ms

    @property
    def scan_share(self) -> float:
        return self.scan_ms / self.compute_ms


def cp_table(ns_per_token_head: float, bandwidth_GBps: float, latency_us: float, *, ranks=RANKS, tokens=TOKENS,
             B: int = 1, H: int = 16, F: int = 2145, DV: int = 64) -> list[CPRow]:
    """Predicted compute and exchange per rank over a grid of ranks and sequence lengths.

    Parameters
    ----------
    ns_per_token_head : float
        Measured forward + backward attention time of one GPU per token and head, in ns (local
        kernel at the same f, D, DV; from ``benchmarks/cp_scaling.py``: ms · 1e6 / (B·H·T)).
    bandwidth_GBps, latency_us : float
        Measured exchange bandwidth and per-message latency (see :func:`comm_estimate`).
    ranks, tokens : sequences of int
        The grid; default 8, 16, 32, 64 GPUs and 1M .. 16M tokens.
    B, H, F, DV : int
        Default: B1 H16, d64 with f = 1 + x + x**2/2 (F = 2145).

    Returns
    -------
    list of CPRow, ranks outer, tokens inner.

    Examples
    --------
    >>> rows = cp_table(26.0, 50.0, 0.0, ranks=[8], tokens=[2**20])
    >>> r = rows[0]
    >>> round(r.compute_ms, 1), round(r.allgather_ms, 2), round(r.scan_ms, 2)   # 26 ns x 16 x 128K
    (54.5, 2.5, 1.07)
    """
    _check_rate(ns_per_token_head, "ns_per_token_head", zero_ok=False)
    rows = []
    for P in ranks:
        for T in tokens:
            e = comm_estimate(P, T, B, H, F, DV, bandwidth_GBps=bandwidth_GBps, latency_us=latency_us)
            rows.append(CPRow(P, T, ns_per_token_head * B * H * T / P * 1e-6, e.allgather_ms, e.scan_ms))
    return rows


def _tokens(n):
    for unit, size in (("M", 2**20), ("K", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def format_cp_table(rows: list[CPRow]) -> str:
    """A markdown table of :func:`cp_table` rows (times in ms; shares in % of the compute).

    >>> print(format_cp_table(cp_table(26.0, 50.0, 0.0, ranks=[8], tokens=[2**20])))
    | ranks P | tokens T | tokens / rank | compute / rank | all-gather | scan | all-gather % | scan % |
    |---|---|---|---|---|---|---|---|
    | 8 | 1M | 128K | 54.5 | 2.50 | 1.07 | 4.6 | 2.0 |
    """
    out = ["| ranks P | tokens T | tokens / rank | compute / rank | all-gather | scan | all-gather % | scan % |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.P} | {_tokens(r.T)} | {_tokens(r.T // r.P)} | {r.compute_ms:.1f} | {r.allgather_ms:.2f} "
                   f"| {r.scan_ms:.2f} | {100 * r.allgather_share:.1f} | {100 * r.scan_share:.1f} |")
    return "\n".join(out)
