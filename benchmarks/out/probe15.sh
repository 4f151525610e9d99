# segments by waves (Based fwd 3, bwd 1; d64 1): fused vs general at short T; cubic backward 1 vs 2 segments
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {"env": {"FASTATTN_FUSED_FWD": "0"}}, {"env": {"FASTATTN_FUSED_BWD": "0"}}, {"env": {"FASTATTN_FUSED_FWD": "0", "FASTATTN_FUSED_BWD": "0"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 2048 4096 8192 16384 --reference --configs "$C" 2>&1 | tee $OUT/sweep26_based.txt | grep "^|\|error\|reference"
C='[{}, {"kw": {"segments": 2}}]'
python benchmarks/sweep.py --row "(1+x)**3:16:64:0" --T 8192 32768 --rep 10 --configs "$C" 2>&1 | tee $OUT/sweep26_cubic.txt | grep "^|\|error"
C='[{}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 8192 16384 --rep 20 --configs "$C" 2>&1 | tee $OUT/sweep26_d64.txt | grep "^|\|error"
