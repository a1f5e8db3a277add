"""What-if planning from a laptop: judge an HF Trainer run as if it ran on an A100.

The run itself is a few CPU steps of MiniLM on real text (docstrings of
installed packages). ``HFPerfHints(target="a100")`` judges it against the A100
preset: fp32 without autocast leaves the Tensor Cores idle (fix:
``TrainingArguments(bf16=True, tf32=True)``), a batch size of 12 and sequence
lengths that are not multiples of 8 miss the Tensor Core tiles
(``DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)``), and padding
waste costs the same there as here. Nothing needs a GPU.

Run (about 30 s on 2 cores)::

    python examples/hf/what_if_a100.py
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _corpus import build_corpus  # noqa: E402
from text_classification import Encoded, minilm_dir  # noqa: E402

from perfcallbacks import DeviceProfile, HFPerfHints, PerfHintWarning  # noqa: E402

UNALIGNED_BATCH_SIZE = 12  # on purpose: not a multiple of 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="a100", help=f"device preset, one of {DeviceProfile.presets()}")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="runs/hf_what_if")
    args = parser.parse_args(argv)
    corpus = build_corpus(per_label=20)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    model = AutoModelForSequenceClassification.from_pretrained(minilm_dir(), num_labels=len(corpus.label_names))
    hints = HFPerfHints(target=args.target, warmup_steps=max(1, args.steps - 1), verbose=True)
    trainer = Trainer(
        model=model, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        train_dataset=Encoded(tokenizer, corpus, padding=False), callbacks=[hints],
        args=TrainingArguments(output_dir=args.out, max_steps=args.steps, report_to="none", use_cpu=True,
                               per_device_train_batch_size=UNALIGNED_BATCH_SIZE, save_strategy="no",
                               disable_tqdm=True))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)  # the summary table shows them
        trainer.train()
    print(f"\nJudged as if on {DeviceProfile.preset(args.target).name}; "
          f"report: {Path(args.out) / 'perf_hints.json'} (render: perfhints report FILE)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
