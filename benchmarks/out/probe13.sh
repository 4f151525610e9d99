# wave probe: d64 degree 2 at 16K over batch*head (38 tiles: 32 bh = 1216 programs, 4 waves of 396 fwd slots)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/waves.py --row "1 + x + x**2/2:64:64:1" --T 16384 --bh 32 31 30 28 21 20 2>&1 | tee $OUT/waves_d64.txt
C='[{}, {"env": {"FASTATTN_BWD_STREAMS": "0"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 --configs "$C" 2>&1 | tee $OUT/sweep24_d64.txt | grep "^|\|error"
C='[{}, {"kw": {"segments": 6}}, {"env": {"FASTATTN_MAXNREG_SEG": "168"}}, {"env": {"FASTATTN_MAXNREG_SEG": "168"}, "kw": {"segments": 6}}, {"kw": {"segments": 5}}, {"kw": {"segments": 7}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --configs "$C" 2>&1 | tee $OUT/sweep24_based.txt | grep "^|\|error"
