# per-kernel breakdown of Based 32K, d64 16K and x 32K (where the fwd+bwd time goes)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/profile_kernels.py --iters 5 --cases "1 + x + x**2/2:16:64:1:32768" "1 + x + x**2/2:64:64:1:16384" "x:64:64:0:32768" 2>&1 | tee $OUT/profile19.txt | grep -v "^-\|Self CPU\|^$" | cut -c1-60,100-200 | head -150
