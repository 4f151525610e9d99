export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{"env": {"FASTATTN_BWD_STREAMS": "0"}}, {}, {"env": {"FASTATTN_BWD_STREAMS": "0"}}, {}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 65536 --rep 20 --configs "$C" 2>&1 | grep "^|\|error"
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --configs "$C" 2>&1 | grep "^|\|error"
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 32768 --configs "$C" 2>&1 | grep "^|\|error"
python benchmarks/sweep.py --row "(1+x)**3:16:64:0" --T 32768 --configs "$C" 2>&1 | grep "^|\|error"
