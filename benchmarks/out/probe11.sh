export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{"env": {"FASTATTN_CHUNK_FWD": "0"}}, {}, {"env": {"FASTATTN_CHUNK_FWD_CPS": "8"}}, {"env": {"FASTATTN_CHUNK_FWD_CPS": "16"}}, {"env": {"FASTATTN_CHUNK_FWD_CPS": "2"}}, {"kw": {"chunk": 32}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --configs "$C" 2>&1 | grep "^|\|error\|FAIL"
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 32768 --configs "$C" 2>&1 | grep "^|\|error"
C2='[{"env": {"FASTATTN_CHUNK_FWD": "0"}}, {}, {"env": {"FASTATTN_CHUNK_FWD_MIB": "1024"}}, {"env": {"FASTATTN_CHUNK_FWD_MIB": "256"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 65536 --rep 10 --configs "$C2" 2>&1 | grep "^|\|error"
python benchmarks/sweep.py --row "(1+x)**3:16:64:0" --T 32768 --rep 10 --configs "$C2" 2>&1 | grep "^|\|error"
