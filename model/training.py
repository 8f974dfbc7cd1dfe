"""Training: label-smoothed loss, Adam with warm-up and inverse-square-root decay (section 5.3),
gradient clipping, periodic validation, checkpoints that resume."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from model.checkpoint import save_checkpoint
from model.data import Batch, Example, collate, epochs, length_buckets
from model.decoding import greedy_decode
from model.tokenizer import PAD_ID, Tokenizer
from model.transformer import Transformer


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings. Training ends at `max_steps`: the same command, seed and machine give
    the same weights whatever else the machine is doing; `max_minutes` is only a guard."""

    max_tokens: int = 4000  # padded source + target tokens per batch
    lr_factor: float = 0.5  # scales the schedule of section 5.3
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 8000
    max_minutes: float = 0.0  # optional guard on training time (0: none); stops early if reached
    valid_every: int = 500  # steps
    seed: int = 1


# The training schedule of each model preset (model/config.py): how many steps it trains for.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(max_steps=300, warmup_steps=30, lr_factor=2.0, max_tokens=3000),
    # The default model: about 25 minutes on 2 CPU cores for the built-in corpus.
    "small": TrainConfig(),
    # The paper's base and big models: 100k and 300k steps of 25k-token batches (section 5.2).
    "base": TrainConfig(max_steps=100_000, max_tokens=25_000, lr_factor=1.0, warmup_steps=4000),
    "big": TrainConfig(max_steps=300_000, max_tokens=25_000, lr_factor=1.0, warmup_steps=4000),
}


def learning_rate(step: int, d_model: int, config: TrainConfig) -> float:
    """lrate = factor * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)."""
    step = max(step, 1)
    return float(
        config.lr_factor * d_model**-0.5 * min(step**-0.5, step * config.warmup_steps**-1.5)
    )


def loss_fn(logits: Tensor, targets: Tensor, label_smoothing: float) -> Tensor:
    """Mean label-smoothed cross-entropy over real target tokens; logits (B, T, V)."""
    return F.cross_entropy(
        logits.flatten(0, 1),
        targets.flatten(),
        ignore_index=PAD_ID,
        label_smoothing=label_smoothing,
    )


@torch.no_grad()
def validate(model: Transformer, examples: Sequence[Example], max_tokens: int) -> dict[str, float]:
    """Validation loss (no smoothing) and greedy exact match on `examples`."""
    model.eval()
    total_loss, total_tokens, exact = 0.0, 0, 0
    for group in length_buckets(examples, max_tokens):
        batch = collate(group)
        logits = model(batch.src_ids, batch.src_mask, batch.tgt_in, batch.tgt_mask)
        n = int(batch.tgt_mask.sum())
        total_loss += float(loss_fn(logits, batch.tgt_out, 0.0)) * n
        total_tokens += n
        limit = batch.tgt_in.shape[1] + 8
        for example, out in zip(
            group, greedy_decode(model, batch.src_ids, batch.src_mask, limit), strict=True
        ):
            exact += out[:-1] == example.tgt
    model.train()
    return {
        "valid_loss": total_loss / max(total_tokens, 1),
        "valid_exact": exact / max(len(examples), 1),
    }


@dataclass
class TrainerState:
    step: int = 0
    train_seconds: float = 0.0
    tokens: int = 0


class Trainer:
    """Runs the optimization loop for one model and saves it under `out_dir`."""

    def __init__(
        self, model: Transformer, tokenizer: Tokenizer, config: TrainConfig, out_dir: Path
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.out_dir = out_dir
        self.state = TrainerState()
        self.optimizer = torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)

    def load_state(self, state: dict[str, object]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self.state = TrainerState(**state["trainer"])  # type: ignore[arg-type]

    def save(self) -> None:
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "trainer": dataclasses.asdict(self.state),
            "train_config": dataclasses.asdict(self.config),
        }
        save_checkpoint(self.out_dir, self.model, self.tokenizer, trainer_state)

    def step(self, batch: Batch) -> float:
        lr = learning_rate(self.state.step + 1, self.model.config.d_model, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        logits = self.model(batch.src_ids, batch.src_mask, batch.tgt_in, batch.tgt_mask)
        loss = loss_fn(logits, batch.tgt_out, self.config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip_norm)
        self.optimizer.step()
        self.state.step += 1
        self.state.tokens += batch.n_tokens
        return loss.item()

    def fit(self, train: Sequence[Example], valid: Sequence[Example]) -> dict[str, float]:
        """Train until `max_steps` (or the `max_minutes` guard); returns the last validation."""
        config = self.config
        budget = config.max_minutes * 60 if config.max_minutes > 0 else math.inf
        self.model.train()
        stream = epochs(train, config.max_tokens, seed=config.seed + self.state.step)
        metrics: dict[str, float] = {}
        # tqdm shows steps / total and the ETA of the remaining steps.
        bar = tqdm(total=config.max_steps, initial=self.state.step, unit="step", dynamic_ncols=True)
        window_tokens, window_start, smoothed = 0, time.perf_counter(), math.nan
        while self.state.step < config.max_steps and self.state.train_seconds < budget:
            started = time.perf_counter()
            epoch, batch = next(stream)
            loss = self.step(batch)
            self.state.train_seconds += time.perf_counter() - started
            smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
            window_tokens += batch.n_tokens
            bar.update(1)
            if self.state.step % 10 == 0:
                now = time.perf_counter()
                bar.set_postfix_str(
                    f"epoch {epoch} loss {smoothed:.3f}"
                    f" {window_tokens / (now - window_start):,.0f} tok/s"
                )
                window_tokens, window_start = 0, now
            if self.state.step % config.valid_every == 0:
                metrics = self._validate_and_save(valid)
                bar.write(self._report(metrics))
        bar.close()
        if self.state.step < config.max_steps:
            print(f"stopped by the --max-minutes guard at step {self.state.step}")
        metrics = self._validate_and_save(valid)
        print(self._report(metrics))
        return metrics

    def _validate_and_save(self, valid: Sequence[Example]) -> dict[str, float]:
        metrics = validate(self.model, valid, self.config.max_tokens)
        self.save()
        return metrics

    def _report(self, metrics: dict[str, float]) -> str:
        s = self.state
        return (
            f"step {s.step}  {s.train_seconds / 60:.1f} min"
            f"  {s.tokens / max(s.train_seconds, 1e-9):,.0f} tok/s"
            f"  valid loss {metrics['valid_loss']:.4f}  valid exact {metrics['valid_exact']:.2%}"
        )
