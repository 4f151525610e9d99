# where the backward's ~1 ms of host time goes (cProfile of 100 fwd+bwd calls)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/host_overhead.py --cases "1 + x + x**2/2:16:64:1:2048" "x:64:64:0:2048" --cprofile 35 2>&1 | tee $OUT/host25.txt | grep -v "^$" | cut -c1-150 | head -200
