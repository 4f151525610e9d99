export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
T=fastattn/kernels/_template.py; cp $T /tmp/t.py
K="--T 32768 --chunks 64 --block-f 256 --segments 0 1"
echo "== kron as is"; python benchmarks/tune_kron.py $K --no-check 2>&1 | grep "^| 3"
sed -i 's/tl.atomic_add(p, b, mask=mask, sem="relaxed")/tl.store(p, b, mask=mask)/' $T
echo "== V1 no atomics in _accumulate"; python benchmarks/tune_kron.py $K --no-check 2>&1 | grep "^| 3"
cp /tmp/t.py $T
sed -i 's/b_phi = tl.reshape(b_xi\[:, :, None\] \* b_xj\[:, None, :\], (BT, BI \* BJ))/b_phi = tl.zeros([BT, BI * BJ], dtype=tl.float32) + tl.sum(b_xi, 1)[:, None]/' $T
grep -c "tl.sum(b_xi, 1)" $T
echo "== V2 no reshape in phi"; python benchmarks/tune_kron.py $K --no-check 2>&1 | grep "^| 3"
cp /tmp/t.py $T
echo "== fused default (scan kernel)"; CHECK=1 python benchmarks/tune_fused.py 2>&1 | grep -v "^$"
echo "== fused fwd 4 warps"; CHECK=0 FASTATTN_FUSED_FWD_WARPS=4 python benchmarks/tune_fused.py 2>&1 | grep -v "^$"
echo "== fused waves 8"; CHECK=0 FASTATTN_FUSED_WAVES=8 python benchmarks/tune_fused.py 2>&1 | grep -v "^$"
