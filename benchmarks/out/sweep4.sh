export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 32768 --rep 20 --configs '[
{"kw": {"chunk": 64, "block_f": 256, "segments": 1}},
{"kw": {"chunk": 64, "block_f": 256}},
{"env": {"FASTATTN_SCAN_WARPS": "4"}, "kw": {"chunk": 64, "block_f": 128, "block_v": 32, "segments": 1}},
{"kw": {"chunk": 64, "block_f": 128, "block_v": 32, "segments": 1}},
{"kw": {"chunk": 64, "block_f": 256, "block_v": 32, "segments": 1}},
{"env": {"FASTATTN_SCAN_WARPS": "4"}, "kw": {"chunk": 64, "block_f": 64, "segments": 1}},
{"env": {"FASTATTN_SCAN_WARPS": "4"}, "kw": {"chunk": 64, "block_f": 64, "block_v": 32, "segments": 1}},
{"kw": {"chunk": 64, "block_f": 128, "segments": 1}},
{"env": {"FASTATTN_SCAN_WARPS": "4"}, "kw": {"chunk": 32, "block_f": 128, "block_v": 32, "segments": 1}}
]' 2>&1 | grep -v "^check" ; 
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --configs '[
{}, {"env": {"FASTATTN_FUSED_FWD_BV": "32", "FASTATTN_FUSED_FWD_WARPS": "4"}}, {"env": {"FASTATTN_FUSED_FWD_BV": "32"}},
{"kw": {"chunk": 16}}, {"kw": {"chunk": 64}}, {"env": {"FASTATTN_FUSED_WAVES": "2"}}, {"env": {"FASTATTN_FUSED_WAVES": "8"}}
]' 2>&1;
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 32768 65536 --configs '[
{}, {"env": {"FASTATTN_FUSED_WAVES": "8"}}, {"env": {"FASTATTN_FUSED_WAVES": "2"}}, {"env": {"FASTATTN_FUSED_FWD_WARPS": "8"}},
{"kw": {"chunk": 32}}, {"env": {"FASTATTN_FUSED_WAVES": "8"}, "kw": {"chunk": 128}}
]' 2>&1
