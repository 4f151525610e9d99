# f = x at d64 (fused path): fla's chunk_linear_attn is faster on the H200 in fwd+bwd at 32K/64K; knobs of the fused backward
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
C='[{}, {"env": {"FASTATTN_FUSED_WAVES": "2"}}, {"env": {"FASTATTN_FUSED_WAVES": "8"}}, {"env": {"FASTATTN_BWD_STREAMS": "1"}}, {"env": {"FASTATTN_FUSED_BWD": "0"}}, {"env": {"FASTATTN_FUSED_BWD": "0", "FASTATTN_SCAN_WARPS": "4"}}, {}]'
python benchmarks/sweep.py --row "x:64:64:0" --T 32768 65536 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep27_x.txt | grep "^|\|error\|check"
