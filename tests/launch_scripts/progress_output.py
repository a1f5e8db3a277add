"""A real fit with the framework's progress bar on, printing a hint table mid-run.

``python progress_output.py lightning|lightning-rich|hf [--plain-print]``: at the third step a
callback prints a report whose fix has one long line of code, through
``perfcallbacks.output.emit_report`` (or plain ``print`` with ``--plain-print``: the old way,
the control case), and warns one hint. Prints the code line as ``CODE=...`` at the end.
"""

import sys

import torch

from perfcallbacks.hints import REGISTRY, emit_hint_warning
from perfcallbacks.output import emit_report
from perfcallbacks.render import render_report
from perfcallbacks.report import Report

MODE = sys.argv[1]
PLAIN = "--plain-print" in sys.argv
CODE = ("DataLoader(dataset, batch_sampler=perfcallbacks.padding.LengthGroupedBatchSampler(lengths, "
        "batch_size=32), collate_fn=DataCollatorWithPadding(tokenizer))")
REPORT = Report(framework="lightning" if MODE.startswith("lightning") else "hf",
                device={"kind": "cpu", "name": "test cpu"},
                hints=[REGISTRY["padding-waste"].make("warmup", "61% of the tokens in 20 observed batches are padding.",
                                                      CODE, {"pad_fraction": 0.61}, impact=2.4)],
                overhead_s=0.05)


def show(trainer=None, framework="torch"):
    if PLAIN:
        print(render_report(REPORT, color=False))
    else:
        emit_report(REPORT, trainer=trainer, framework=framework, color=False)
    emit_hint_warning(REPORT.hints[0])


if MODE.startswith("lightning"):
    import lightning.pytorch as L
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from torch.utils.data import DataLoader, TensorDataset

    class Boring(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(32, 2)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Show(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                show(trainer, "lightning")

    bar = (RichProgressBar(console_kwargs={"force_terminal": True, "width": 80}) if MODE == "lightning-rich"
           else TQDMProgressBar(refresh_rate=1))
    data = TensorDataset(torch.randn(64, 32), torch.randint(0, 2, (64,)))
    trainer = L.Trainer(max_steps=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, callbacks=[bar, Show()])
    trainer.fit(Boring(), DataLoader(data, batch_size=8))
else:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(1, 100, (16,), generator=g), "labels": i % 2}

    class Show(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                show(None, "hf")

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    args = TrainingArguments(output_dir=sys.argv[2] if len(sys.argv) > 2 and not sys.argv[2].startswith("--")
                             else "hf_out", max_steps=6, per_device_train_batch_size=8, logging_steps=2,
                             report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=False)
    Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=Rows(), callbacks=[Show()]).train()
print(f"CODE={CODE}", flush=True)
