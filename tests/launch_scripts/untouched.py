"""Imports every framework we can patch and prints where each Trainer.__init__ comes from."""

import sys

import lightning.pytorch
import pytorch_lightning
import transformers

for name, cls in (
    ("lightning", lightning.pytorch.Trainer),
    ("pytorch_lightning", pytorch_lightning.Trainer),
    ("transformers", transformers.Trainer),
):
    init = cls.__init__
    print(f"{name} {init.__code__.co_filename} {hasattr(init, '__perfhints_original__')}")
print(f"HOOK_LOADED={'_perfhints_hook' in sys.modules}")
print(f"FINDERS={[type(f).__name__ for f in sys.meta_path]}")
