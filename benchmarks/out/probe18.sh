# the fused path cut by waves (x d64: 8 segments; Based 2K/4K) against the old FASTATTN_FUSED_WAVES=4, side streams for x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {"env": {"FASTATTN_BWD_STREAMS": "1"}}, {"env": {"FASTATTN_FUSED_WAVES": "4"}}, {}]'
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 16384 32768 65536 --rep 50 --reference --configs "$C" 2>&1 | tee $OUT/sweep29_x.txt | grep "^|\|error\|reference"
C='[{}, {"env": {"FASTATTN_FUSED_WAVES": "4"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 2048 4096 --rep 50 --reference --configs "$C" 2>&1 | tee $OUT/sweep29_based.txt | grep "^|\|error\|reference"
