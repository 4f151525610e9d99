"""fastattn.kernels.aot: every kernel the host launches compiles for sm_90 on the CPU (no GPU needed).

The interpreter checks no layouts, shared memory or registers; this compiles the GPU code paths
(Triton ships ptxas) with the signatures the host launchers pass (aot records their launches on meta
tensors for the routes ``plan`` gives an sm_90 GPU), so no kernel argument can be left out. It runs in
a subprocess, since the test session turns Triton's interpreter on.
"""
import os
import re
import subprocess
import sys

import pytest


FUSED = {"_segment_state_kernel", "_segment_scan_kernel", "_fused_fwd_kernel", "_bwd_prep_kernel",
         "_segment_state_kernel[SCALE_Y]", "_segment_scan_kernel[REVERSE]", "_fused_bwd_kernel[PASS=0]",
         "_fused_bwd_kernel[PASS=1]"}


@pytest.mark.parametrize("spec, D, DV, T, tuning, kernels, dtype", [
    ("x", 64, 64, 8192, None,
     {"_segment_state_kernel", "_segment_scan_kernel", "_fused_fwd_kernel", "_bwd_prep_kernel",
      "_segment_state_kernel[SCALE_Y]", "_segment_scan_kernel[REVERSE]", "_fused_bwd_kernel[PASS=0]",
      "_fused_bwd_kernel[PASS=1]"}, "bf16"),
    ("1 + x + x**2/2", 16, 64, 2048, None, FUSED, "bf16"),
    # fp32 operands double the fused tiles: the plan must still fit shared memory
    ("1 + x + x**2/2", 16, 64, 2048, None, FUSED, "fp32"),
    # a small v tile with a 256-feature table: chunk 64 asked 458,752 B in fp32 and read out of bounds in bf16
    ("1 + x + x**2/2", 16, 16, 2048, None, FUSED, "fp32"),
    ("1 + x + x**2/2", 16, 1, 2048, None, FUSED, "bf16"),
    ("1 + x + x**2/2", 16, 64, 4096, '{"fused": false}',
     {"_intra_fwd_kernel", "_segment_state_kernel", "_segment_scan_kernel", "_inter_fwd_kernel", "_finalize_kernel",
      "_bwd_prep_kernel", "_intra_bwd_kernel", "_segment_state_kernel[SCALE_Y]", "_segment_scan_kernel[REVERSE]",
      "_inter_bwd_kernel[PASS=0]", "_inter_bwd_kernel[PASS=1]"}, "bf16"),
    # fp32 at a 128-wide v tile asked 263,168 B in the backward: the plan splits v into 64-wide tiles
    ("1 + x + x**2/2", 16, 65, 2048, None,
     {"_intra_fwd_kernel", "_segment_state_kernel", "_segment_scan_kernel", "_inter_fwd_kernel", "_finalize_kernel",
      "_bwd_prep_kernel", "_intra_bwd_kernel", "_segment_state_kernel[SCALE_Y]", "_segment_scan_kernel[REVERSE]",
      "_inter_bwd_kernel[PASS=0]", "_inter_bwd_kernel[PASS=1]"}, "fp32"),
], ids=["fused-x-d64", "fused-based", "fused-based-fp32", "fused-based-v16-fp32", "fused-based-v1",
     "kron-based", "kron-based-v65-fp32"])
def test_every_kernel_compiles_for_sm90(spec, D, DV, T, tuning, kernels, dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    args = [sys.executable, "-m", "fastattn.kernels.aot", spec, "--dtype", dtype, "--head-dim", str(D),
            "--head-dim-v", str(DV), "--T", str(T)] + (["--tuning", tuning] if tuning else [])
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [line.split() for line in p.stdout.splitlines() if "REG:" in line]
    assert {r[1] for r in rows} == kernels, p.stdout
    for r in rows:
        line = " ".join(r)
        regs = int(re.search(r"REG:(\d+)", line).group(1))
        assert 0 < regs <= 255, r
        # the dynamic shared memory a launch asks for fits an sm_90 block (227 KB); only the element-wise
        # kernels (segment scan, finalize) ask for none
        smem = int(re.search(r"SMEM:(\d+)", line).group(1))
        assert smem <= 232448, r
        assert (smem > 0) == (r[1] not in ("_segment_scan_kernel", "_segment_scan_kernel[REVERSE]", "_finalize_kernel")), r
