# is the walks' output traffic the limit? pointer adds (TMA off) with and without their rows masked off
# (FASTATTN_PROBE_NOADD: the MMAs stay, the o / dv adds move no bytes; timing only, wrong on purpose).
# Ran against a temporary patch of 5315565+1873b2c, not committed: a constexpr PROBE on _inter_fwd_kernel and
# _inter_bwd_kernel (host: PROBE=_knob("FASTATTN_PROBE_NOADD", 0)) and the row mask of the o add (fwd) and
# the dv add (bwd pass 1) replaced by m_t & ((o_t * 0 + PROBE) == 0).
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
A='{"FASTATTN_TMA_FWD": "0", "FASTATTN_TMA_BWD": "4"}'
P='{"FASTATTN_TMA_FWD": "0", "FASTATTN_TMA_BWD": "4", "FASTATTN_PROBE_NOADD": "1"}'
C="[{}, {\"env\": $A}, {\"env\": $P, \"probe\": true}, {\"env\": $A}, {\"env\": $P, \"probe\": true}, {}]"
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 32768 --rep 50 --configs "$C" 2>&1 | tee $OUT/sweep33_based.txt | grep "^|\|rror\|check"
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 --rep 20 --configs "$C" 2>&1 | tee $OUT/sweep33_d64.txt | grep "^|\|rror\|check"
