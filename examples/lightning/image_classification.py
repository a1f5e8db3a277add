"""Train a small ResNet-style CNN with Lightning: the CNN hints, then the channels-last fix, measured.

The images are synthetic (each class is a different oriented stripe pattern plus noise, so the
network learns something real); the network is defined here (torchvision is not needed).

1. naive run: contiguous (NCHW) model and images, ``Trainer()`` defaults. ``PerfHintCallback``
   measures channels_last against the contiguous layout on a real batch (forward + backward) and
   reports ``channels-last-off`` when it is faster; ``--target a100`` also plans the run for an A100
   (``cudnn-benchmark-off``: fixed image shapes with ``cudnn.benchmark`` off).
2. ``--fixed``: the hint applied by hand (``configure_model`` converts the model, ``training_step``
   the images); throughput before/after on the same number of steps.
3. ``--auto-apply``: predict with ``PerfHintCallback(auto_apply=True)``: the ``channels-last`` fix is
   measured on the job's own batches (speed and fidelity) and kept only if it wins; the user's
   model is left as it was.

Run::

    python examples/lightning/image_classification.py --fixed --auto-apply
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from perfcallbacks import PerfHintCallback, Report

CLASSES = 4


# -- data ---------------------------------------------------------------------------------------------
class StripeImages(Dataset):
    """``n`` RGB images of ``size`` x ``size``: class k is a stripe pattern at angle k*45 degrees, plus noise."""

    def __init__(self, n: int, size: int = 32, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, CLASSES, (n,), generator=g)
        ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                                indexing="ij")
        patterns = []
        for k in range(CLASSES):
            angle = math.pi * k / CLASSES
            patterns.append(torch.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 0.8))
        base = torch.stack(patterns)[self.labels]  # (n, size, size)
        self.images = base.unsqueeze(1).repeat(1, 3, 1, 1) + 0.5 * torch.randn(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index]


# -- model --------------------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    """ResNet's basic block: two 3x3 convs with BatchNorm and a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-style network for small images: stem, three stages of basic blocks, global pool, classifier."""

    def __init__(self, width: int = 32, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2),
                                    BasicBlock(2 * width, 4 * width, stride=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class ImageClassifier(pl.LightningModule):
    """``channels_last=True`` is the hint applied by hand: model and images in NHWC."""

    def __init__(self, width: int = 32, channels_last: bool = False, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        torch.manual_seed(0)
        self.net = SmallResNet(width)

    def configure_model(self) -> None:
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = nn.functional.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def predict_step(self, batch: Any, batch_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return self(images).argmax(-1), labels

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


# -- runs ---------------------------------------------------------------------------------------------
def trainer_for(root: Path, steps: int, callbacks: list, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      limit_val_batches=0, default_root_dir=str(root), callbacks=callbacks, **kwargs)


class StepClock(pl.Callback):
    """Wall time of the training steps after the first (the first pays one-off set-up)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._start)


def train_run(name: str, out: Path, *, channels_last: bool, steps: int, warmup: int, batch_size: int,
              image_size: int, target: str | None, width: int) -> tuple[Report, float, ImageClassifier]:
    print(f"\n=== {name}: {'channels_last' if channels_last else 'contiguous (NCHW)'}, batch {batch_size}, "
          f"{image_size}x{image_size} images ===", flush=True)
    loader = DataLoader(StripeImages(batch_size * steps, image_size), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    hints = PerfHintCallback(warmup_steps=warmup, target=target, report_path=out / name / "perf_hints.json")
    clock = StepClock()
    model = ImageClassifier(width, channels_last=channels_last)
    trainer_for(out / name, steps, [hints, clock]).fit(model, loader)
    timed = sorted(clock.times[1:])
    median = timed[len(timed) // 2] if timed else float("nan")
    print(f"{name}: median step {median * 1e3:.1f} ms ({len(timed)} steps)")
    return hints.advisor.report, median, model


def predict_with_fixes(model: ImageClassifier, loader: DataLoader, out: Path) -> Report:
    """Predictions without, then with auto_apply (channels-last measured and guarded on the job's batches)."""
    print("\n=== predict: plain, then PerfHintCallback(auto_apply=True) ===", flush=True)
    start = time.perf_counter()
    ref = trainer_for(out / "predict", 1, []).predict(model, loader)
    plain_s = time.perf_counter() - start
    hints = PerfHintCallback(auto_apply=True, verbose=True, report_path=out / "predict" / "perf_hints.json")
    start = time.perf_counter()
    new = trainer_for(out / "predict", 1, [hints]).predict(model, loader)
    fixed_s = time.perf_counter() - start  # includes measuring the fixes
    ref_pred, new_pred = torch.cat([p for p, _ in ref]), torch.cat([p for p, _ in new])
    labels = torch.cat([y for _, y in ref])
    print(f"accuracy plain {(ref_pred == labels).float().mean():.3f} | with fixes "
          f"{(new_pred == labels).float().mean():.3f} | prediction agreement {(ref_pred == new_pred).float().mean():.3f}")
    print(f"predict wall time: plain {plain_s:.2f}s, with auto_apply {fixed_s:.2f}s (includes measuring the fixes)")
    still_nchw = all(p.is_contiguous() for p in model.parameters())
    print(f"user's model left contiguous after predict: {still_nchw}")
    return hints.advisor.report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps per run")
    parser.add_argument("--warmup-steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--target", default=None, help="plan for another device too, e.g. a100")
    parser.add_argument("--fixed", action="store_true", help="also train with channels_last applied by hand")
    parser.add_argument("--auto-apply", action="store_true", help="predict with auto_apply=True")
    parser.add_argument("--predict-batches", type=int, default=160,
                        help="a predict job long enough for the guard to afford measuring the fix")
    parser.add_argument("--out", default="runs/image_classification")
    args = parser.parse_args(argv)
    out = Path(args.out)
    common = dict(steps=args.steps, warmup=args.warmup_steps, batch_size=args.batch_size,
                  image_size=args.image_size, target=args.target, width=args.width)
    report, naive_s, model = train_run("naive", out, channels_last=False, **common)
    result: dict[str, Any] = {"naive_hints": report.hint_ids, "naive_step_s": naive_s,
                              "naive_report": report.to_dict()}
    if args.fixed:
        fixed, fixed_s, _ = train_run("fixed", out, channels_last=True, **common)
        result.update(fixed_hints=fixed.hint_ids, fixed_step_s=fixed_s)
        print(f"\nthroughput: channels_last steps are {naive_s / fixed_s:.2f}x the speed of contiguous ones")
    if args.auto_apply:
        loader = DataLoader(StripeImages(args.batch_size * args.predict_batches, args.image_size, seed=1),
                            batch_size=args.batch_size)
        predict = predict_with_fixes(model, loader, out)
        result["fixes"] = [f.to_dict() for f in predict.fixes]
    return result


if __name__ == "__main__":
    main()
