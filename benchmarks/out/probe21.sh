# the segment-sum pass over g chunks per step (FASTATTN_SEG_ROWS = g, one [BF, g*64] x [g*64, BV] MMA), warps 4/8
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {}, {"env": {"FASTATTN_SEG_ROWS": "2"}}, {"env": {"FASTATTN_SEG_ROWS": "4"}}, {"env": {"FASTATTN_SEG_ROWS": "4", "FASTATTN_SEG_WARPS": "8"}}, {"env": {"FASTATTN_SEG_ROWS": "2", "FASTATTN_SEG_WARPS": "8"}}, {"env": {"FASTATTN_SEG_ROWS": "4"}, "kw": {"segments": 4}}, {"env": {"FASTATTN_SEG_ROWS": "4"}, "kw": {"segments": 6}}, {"kw": {"segments": 4}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep31_based.txt | grep "^|\|rror\|_segment_state"
C='[{}, {}, {"env": {"FASTATTN_SEG_ROWS": "2"}}, {"env": {"FASTATTN_SEG_ROWS": "4"}}, {"env": {"FASTATTN_SEG_ROWS": "4", "FASTATTN_SEG_WARPS": "8"}}, {}]'
python benchmarks/sweep.py --row "x:64:64:0" --T 32768 65536 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep31_x.txt | grep "^|\|rror"
python benchmarks/sweep.py --row "(1+x)**3:16:64:0" --T 32768 --rep 20 --configs "$C" 2>&1 | tee $OUT/sweep31_cubic.txt | grep "^|\|rror"
