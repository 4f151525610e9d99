"""Small forward+backward of every benchmark configuration, for compute-sanitizer (bf16, T = 300)."""
import torch

from fastattn.kernels.poly import poly_attention

for spec, D, DV, norm in [("1 + x + x**2/2", 16, 64, True), ("1 + x + x**2/2", 64, 64, True), ("x", 64, 64, False),
                          ("(1+x)**3", 16, 64, False)]:
    q, k = (torch.randn(1, 2, 300, D, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
    v = torch.randn(1, 2, 300, DV, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    poly_attention(q, k, v, spec, normalize=norm, segments=3).backward(torch.randn_like(v))
    torch.cuda.synchronize()
    print(spec, D, DV, "ok", flush=True)
