# L2 prefetch of the walks' next rows (FASTATTN_PREFETCH = chunks ahead) against off, Based and d64 degree 2
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {}, {"env": {"FASTATTN_PREFETCH": "1"}}, {"env": {"FASTATTN_PREFETCH": "2"}}, {"env": {"FASTATTN_PREFETCH": "4"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep30_based.txt | grep "^|\|rror"
C='[{}, {}, {"env": {"FASTATTN_PREFETCH": "1"}}, {"env": {"FASTATTN_PREFETCH": "2"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 --rep 30 --configs "$C" 2>&1 | tee $OUT/sweep30_d64.txt | grep "^|\|rror"
