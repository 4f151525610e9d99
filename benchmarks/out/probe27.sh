# short sequences: eager fwd+bwd against a CUDA-graph replay of the same call (and their agreement)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/graphs.py --cases "1 + x + x**2/2:16:64:1:2048" "1 + x + x**2/2:16:64:1:8192" "x:64:64:0:2048" "x:64:64:0:8192" "1 + x + x**2/2:64:64:1:2048" 2>&1 | tee $OUT/graphs27.txt | tail -12
