# Kronecker group width 2 / 4 against 8 for Based (4 tiles each): what a narrower group's build costs
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {}, {"env": {"FASTATTN_KRON_GROUP": "2"}}, {"env": {"FASTATTN_KRON_GROUP": "4"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 32768 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep35_based.txt | grep "^|\|rror"
