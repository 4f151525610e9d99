# f = x at d64: the fused backward's two walks side by side, with segment counts near whole waves
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {"env": {"FASTATTN_BWD_STREAMS": "1"}}, {"env": {"FASTATTN_BWD_STREAMS": "1", "FASTATTN_FUSED_WAVES": "3.7"}}, {"env": {"FASTATTN_BWD_STREAMS": "1", "FASTATTN_FUSED_WAVES": "7.7"}}, {"env": {"FASTATTN_BWD_STREAMS": "1", "FASTATTN_FUSED_WAVES": "1.9"}}]'
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 16384 32768 65536 --rep 50 --regs --configs "$C" 2>&1 | tee $OUT/sweep28_x.txt | grep "^|\|error\|regs _fused"
