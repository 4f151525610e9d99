export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
python benchmarks/sweep.py --row "1 + x + x**2/2:64:64:1" --T 16384 32768 --rep 20 --configs '[
{}, {"kw": {"block_f": 32}}, {"env": {"FASTATTN_SCAN_WARPS": "2"}, "kw": {"block_f": 32}},
{"env": {"FASTATTN_SCAN_WARPS": "2"}}, {"kw": {"chunk": 32}}, {"kw": {"chunk": 32, "block_f": 32}},
{"env": {"FASTATTN_SCAN_WARPS": "2"}, "kw": {"block_v": 32}}, {"kw": {"block_f": 128}}, {"kw": {"block_f": 16}},
{"kw": {"segments": 2}}
]' 2>&1 | grep -v "^check" ;
python benchmarks/sweep.py --row "1 + x + x**2/2:16:64:1" --T 8192 32768 --configs '[
{}, {"env": {"FASTATTN_FUSED_WAVES": "8"}}, {"env": {"FASTATTN_FUSED_WAVES": "16"}},
{"env": {"FASTATTN_FUSED_FWD_BV": "32", "FASTATTN_FUSED_FWD_WARPS": "4"}},
{"env": {"FASTATTN_FUSED_FWD_BV": "32", "FASTATTN_FUSED_FWD_WARPS": "4", "FASTATTN_FUSED_WAVES": "8"}}
]' 2>&1 | grep -v "^check";
python benchmarks/sweep.py --row "x:64:64:0" --T 8192 32768 65536 --configs '[
{}, {"env": {"FASTATTN_FUSED_WAVES": "8"}}, {"env": {"FASTATTN_FUSED_WAVES": "16"}}, {"env": {"FASTATTN_FUSED_WAVES": "8"}, "kw": {"chunk": 32}}
]' 2>&1 | grep -v "^check"
