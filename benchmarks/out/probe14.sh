# constant outside the scans (d64: 37 tiles) against FASTATTN_CONST_OUT=0; segment counts for Based (last segment's sum skipped)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {"env": {"FASTATTN_CONST_OUT": "0"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 65536 --rep 20 --reference --configs "$C" 2>&1 | tee $OUT/sweep25_d64.txt | grep "^|\|error\|reference"
python benchmarks/sweep.py --row "(1 + x)**2:64:64:0" --T 16384 --rep 20 --configs "$C" 2>&1 | tee $OUT/sweep25_d64_nonorm.txt | grep "^|\|error\|check"
C='[{}, {"kw": {"segments": 1}}, {"kw": {"segments": 2}}, {"kw": {"segments": 3}}, {"kw": {"segments": 4}}, {"kw": {"segments": 6}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 16384 32768 --reference --configs "$C" 2>&1 | tee $OUT/sweep25_based.txt | grep "^|\|error\|reference"
