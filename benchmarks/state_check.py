"""Carried state on the GPU: bf16 Triton over two calls (3000 + 1096 tokens, the state carried) against one fp32 torch call.

    python benchmarks/state_check.py      # prints one line per head dim and "0 failing"
"""
import torch
from fastattn.attention import fast_attention
from fastattn.attention.state import State
from fastattn.kernels.checks import errors
spec, dev = "1 + x + x**2/2", "cuda"
bad = 0
for D in (16, 64):
    torch.manual_seed(D)
    kp = 0.5 * torch.randn(1, 4, 512, D, device=dev); vp = torch.randn(1, 4, 512, 64, device=dev)
    with torch.no_grad():
        _, st = fast_attention(kp, kp, vp, spec, output_final_state=True, backend="torch")
    base = [0.5 * torch.randn(1, 4, 4096, n, device=dev) for n in (D, D, 64)]
    do = torch.randn(1, 4, 4096, 64, device=dev)
    dS, dz = 1e-3 * torch.randn_like(st.S), 1e-3 * torch.randn_like(st.z)
    res = {}
    for name, dt, backend, split in (("ref", torch.float32, "torch", None), ("bf16", torch.bfloat16, "triton", 3000)):
        x = [t.detach().clone().to(dt).requires_grad_() for t in base]
        init = [st.S.detach().clone().requires_grad_(), st.z.detach().clone().requires_grad_()]
        s0 = State(*init, st.tokens)
        if split:
            o1, s1 = fast_attention(*(t[:, :, :split] for t in x), spec, initial_state=s0, output_final_state=True, backend=backend)
            o2, sf = fast_attention(*(t[:, :, split:] for t in x), spec, initial_state=s1, output_final_state=True, backend=backend)
            o = torch.cat([o1, o2], 2)
        else:
            o, sf = fast_attention(*x, spec, initial_state=s0, output_final_state=True, backend=backend)
        ((o.float() * do).sum() + (sf.S * dS).sum() + (sf.z * dz).sum()).backward()
        res[name] = [o.float(), sf.S, sf.z] + [None if t.grad is None else t.grad.float() for t in x + init]
    line = []
    for n, r, g in zip(["o", "S_fin", "z_fin", "dq", "dk", "dv", "dS0", "dz0"], res["ref"], res["bf16"]):
        if g is None or r is None:
            bad += 1
            line.append(f"{n} MISSING")
            continue
        e = errors(r, g)
        ok = e["nonfinite"] == 0 and e["rel_rms"] < 2e-2
        bad += not ok
        line.append(f"{n} {e['rel_rms']:.1e}" + ("" if ok else " FAIL"))
    print(f"d{D}/v64 bf16 Triton 3000+1096 vs fp32 torch one call, rel-RMS: " + ", ".join(line))
print(f"{bad} failing")
