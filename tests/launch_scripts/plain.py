"""A plain script with no Trainer: prints which frameworks got imported, then exits with argv[1] (or raises)."""

import sys

HEAVY = ("torch", "lightning", "pytorch_lightning", "transformers", "perfcallbacks")
print(f"HEAVY_IMPORTED={sorted(m for m in HEAVY if m in sys.modules)}")
print(f"HOOK_LOADED={'_perfhints_hook' in sys.modules}")
print(f"ARGS={sys.argv[1:]}", flush=True)
if sys.argv[1:] == ["raise"]:
    raise ValueError("plain script failed")
sys.exit(int(sys.argv[1]) if sys.argv[1:] else 0)
