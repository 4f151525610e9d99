# short sequences: host against GPU time at 2K-8K, and fused against general passes for Based at 2K / 4K
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/host_overhead.py --cases "1 + x + x**2/2:16:64:1:2048" "1 + x + x**2/2:16:64:1:4096" "1 + x + x**2/2:16:64:1:8192" "x:64:64:0:2048" 2>&1 | tee $OUT/host24.txt | grep "^|"
C='[{}, {}, {"env": {"FASTATTN_FUSED_BWD": "0"}}, {"env": {"FASTATTN_FUSED_FWD": "0"}}, {"env": {"FASTATTN_FUSED": "0"}}, {"env": {"FASTATTN_BWD_STREAMS": "0"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 2048 4096 --rep 100 --configs "$C" 2>&1 | tee $OUT/sweep34_based.txt | grep "^|\|rror"
