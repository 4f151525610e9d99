# device time (CUDA-graph replay) of x d64 over segment counts and stream use, and Based 8K SEG_ROWS 1 vs 2
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {}, {"kw": {"segments": 4}}, {"kw": {"segments": 16}}, {"kw": {"segments": 32}}, {"env": {"FASTATTN_BWD_STREAMS": "1"}}, {"env": {"FASTATTN_BWD_STREAMS": "0"}}, {"env": {"FASTATTN_SEG_ROWS": "1"}}, {}]'
timeout 200 python benchmarks/sweep.py --row "x:64:64:0" --T 8192 16384 32768 --rep 50 --graphs --configs "$C" 2>&1 | tee $OUT/sweep36_x.txt | grep "^|\|rror"
C='[{}, {}, {"env": {"FASTATTN_SEG_ROWS": "1"}}, {}, {"env": {"FASTATTN_SEG_ROWS": "1"}}]'
timeout 100 python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 --rep 50 --graphs --configs "$C" 2>&1 | tee $OUT/sweep36_based.txt | grep "^|\|rror"
