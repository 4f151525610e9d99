# session 10, first H200 call: wave-quantisation probes (d64 tiles 38 vs 36; Based 8K segments)
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,clocks.mem --format=csv
python -c "import torch, triton; p=torch.cuda.get_device_properties(0); print(p.name, p.multi_processor_count, torch.__version__, triton.__version__)"
C='[{}, {"env": {"FASTATTN_KRON_GROUP": "4"}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 65536 --rep 20 --regs --configs "$C" 2>&1 | tee $OUT/sweep23_d64.txt | grep "^|\|error\|^regs"
C='[{}, {"kw": {"segments": 4}}, {"kw": {"segments": 6}}, {"kw": {"segments": 9}}, {"kw": {"segments": 12}}, {"kw": {"segments": 16}}]'
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --regs --configs "$C" 2>&1 | tee $OUT/sweep23_based.txt | grep "^|\|error\|^regs"
python benchmarks/profile_kernels.py --cases "1 + x + x**2/2:16:64:1:8192" "1 + x + x**2/2:64:64:1:16384" 2>&1 | tee $OUT/profile4.txt | tail -60
