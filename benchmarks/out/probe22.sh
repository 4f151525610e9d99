# v13: the segment pass two chunks a step (default now) against one, alternating; then the full bench
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1
C='[{}, {}, {"env": {"FASTATTN_SEG_ROWS": "1"}}, {}, {"env": {"FASTATTN_SEG_ROWS": "1"}}, {}, {"env": {"FASTATTN_SEG_ROWS": "1"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --rep 100 --configs "$C" 2>&1 | tee $OUT/sweep32_based.txt | grep "^|\|rror"
python benchmarks/bench.py --T 2048 8192 16384 32768 65536 --results $OUT/RESULTS.md --json $OUT/v13.json --plot $OUT/v13.png 2>&1 | tee $OUT/bench_v13.log | grep -v "^ours\|^sdpa\|^fla" | tail -5
sed -n '/Targets/,/bench:end/p' $OUT/RESULTS.md | grep "^|" | cut -c1-120
