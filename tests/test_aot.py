"""fastattn.kernels.aot: every kernel the host launches compiles for sm_90 on the CPU (no GPU needed).

The interpreter checks no layouts, shared memory or registers; this compiles the GPU code paths
(Triton ships ptxas), and fails when a kernel parameter has no value in aot's table (a constexpr
left out reads as None and breaks compilation: the fused segment pass's TMA_LD was, until
2026-11-30). It runs in a subprocess, since the test session turns Triton's interpreter on.
"""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.parametrize("spec, D, DV, fused, kernels", [
    ("x", 64, 64, "1", {"_segment_state_kernel", "_fused_fwd_kernel", "_fused_bwd_kernel[PASS=0]",
                        "_fused_bwd_kernel[PASS=1]"}),
    ("1 + x + x**2/2", 16, 64, "0", {"_intra_fwd_kernel", "_segment_state_kernel", "_inter_fwd_kernel",
                                     "_intra_bwd_kernel", "_inter_bwd_kernel[PASS=0]", "_inter_bwd_kernel[PASS=1]"}),
], ids=["fused-x-d64", "kron-based"])
def test_every_kernel_compiles_for_sm90(spec, D, DV, fused, kernels):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["FASTATTN_FUSED"] = fused
    p = subprocess.run([sys.executable, "-m", "fastattn.kernels.aot", spec, "--dtype", "bf16", "--head-dim", str(D),
                        "--head-dim-v", str(DV)], capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line.split() for line in p.stdout.splitlines() if "REG:" in line]
    assert {r[1] for r in rows} == kernels, p.stdout
    for r in rows:
        line = " ".join(r)
        regs = int(re.search(r"REG:(\d+)", line).group(1))
        assert 0 < regs <= 255, r
        # the dynamic shared memory a launch asks for fits an sm_90 block (227 KB)
        assert 0 < int(re.search(r"SMEM:(\d+)", line).group(1)) <= 232448, r
