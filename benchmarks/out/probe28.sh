# v14: the full bench, with each row's fwd+bwd also replayed from a CUDA graph
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
timeout 540 python benchmarks/bench.py --T 2048 8192 16384 32768 65536 --graphs --results $OUT/RESULTS.md --json $OUT/v14.json --plot $OUT/v14.png 2>&1 | tee $OUT/bench_v14.log | grep -v "^ours\|^sdpa\|^fla" | tail -5
sed -n '/Targets/,/bench:end/p' $OUT/RESULTS.md | grep "^| [1-4]" | cut -c1-110
