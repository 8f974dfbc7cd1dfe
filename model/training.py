"""Training: label-smoothed loss, Adam with warm-up and inverse-square-root decay (section 5.3),
gradient clipping, mixed precision, data-parallel ranks, periodic validation, and checkpoints that
resume exactly (step, optimizer, data position, random state), also on another number of ranks."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model.checkpoint import STEPS_DIR, CheckpointError, save_checkpoint, save_step_weights
from model.data import (
    BatchStream,
    DataPosition,
    Example,
    collate,
    collate_pairs,
    length_buckets,
    rank_share,
)
from model.decoding import greedy_decode
from model.distributed import World
from model.shards import TokenizedPairs
from model.tokenizer import PAD_ID, Tokenizer
from model.transformer import Transformer

TRAIN_LOG_FILE = "train_log.jsonl"


class TrainConfigError(ValueError):
    """Training options that cannot work together, or a resume that would change the run."""


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings. Training ends at `max_steps`: the same command, seed and machine give
    the same weights whatever else the machine is doing; `max_minutes` is only a guard."""

    max_tokens: int = 4000  # padded source + target tokens per step, over all ranks together
    lr_factor: float = 0.5  # scales the schedule of section 5.3
    warmup_steps: int = 200
    label_smoothing: float = 0.1
    clip_norm: float = 1.0
    max_steps: int = 8000
    max_minutes: float = 0.0  # optional guard on training time (0: none); stops early if reached
    valid_every: int = 500  # steps
    save_every: int = 0  # steps between checkpoints (0: at every validation)
    keep_checkpoints: int = 0  # weights of the last N saves kept in DIR/steps/ for model.average
    precision: str = "fp32"  # autocast dtype of the forward pass: fp32, bf16 or fp16 (scaled)
    seed: int = 1

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise TrainConfigError(
                f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}"
            )
        for name in ("max_tokens", "max_steps", "valid_every", "warmup_steps"):
            if getattr(self, name) < 1:
                flag = f"--{name.replace('_', '-')}"
                raise TrainConfigError(f"{flag} must be >= 1, got {getattr(self, name)}")
        for name in ("save_every", "keep_checkpoints", "max_minutes"):
            if getattr(self, name) < 0:
                flag = f"--{name.replace('_', '-')}"
                raise TrainConfigError(f"{flag} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise TrainConfigError(
                f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"
            )


# What a resumed run may change: how long it runs, how it reports and saves, and the autocast
# precision (a hardware choice: a run started on fp32 may go on in bf16). The rest decides which
# batches come and what a step computes, so a resume that changes it is refused.
RESUMABLE_CHANGES = frozenset(
    {"max_steps", "max_minutes", "valid_every", "save_every", "keep_checkpoints", "precision"}
)


# The training schedule of each model preset (model/config.py): how many steps it trains for.
TRAIN_PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(max_steps=300, warmup_steps=30, lr_factor=2.0, max_tokens=3000),
    # The default model: about 20 minutes on 2 CPU cores for the built-in corpus.
    "small": TrainConfig(),
    # The paper's base and big models: 100k and 300k steps of batches of about 25k source and
    # 25k target tokens (section 5.1), so 50k padded tokens in all.
    "base": TrainConfig(max_steps=100_000, max_tokens=50_000, lr_factor=1.0, warmup_steps=4000),
    "big": TrainConfig(max_steps=300_000, max_tokens=50_000, lr_factor=1.0, warmup_steps=4000),
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
def validate(
    model: Transformer,
    examples: Sequence[Example],
    max_tokens: int,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Validation loss (no smoothing) and greedy exact match on `examples`."""
    model.eval()
    total_loss, total_tokens, exact = 0.0, 0, 0
    for group in length_buckets(examples, max_tokens):
        batch = collate(group).to(device or torch.device("cpu"))
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
    """Runs the optimization loop for one model and saves it under `out_dir`.

    Under torchrun every rank runs one Trainer: each computes its share of every global batch
    (`rank_share`), DistributedDataParallel sums the gradients, and rank 0 alone validates and
    writes. The loss of a rank's share is weighted by its share of the batch's target tokens, so
    a step computes the same gradient (the mean over the global batch) on any number of ranks.
    """

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        config: TrainConfig,
        out_dir: Path,
        world: World | None = None,
        corpus: dict[str, object] | None = None,
    ) -> None:
        self.world = world or World()
        self.model = model.to(self.world.device)
        self.tokenizer = tokenizer
        self.config = config
        self.out_dir = out_dir
        self.corpus = corpus or {}  # recorded, so that a resume can check it reads the same data
        self.state = TrainerState()
        self.saved_step: int | None = None  # the step of the checkpoint on disk
        self.saving = False  # a signal that stops the run waits for the checkpoint being written
        self.after_save: Callable[[], None] | None = None
        self.position: DataPosition | None = None
        for bias in model.key_biases():
            bias.requires_grad_(False)
        trained = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trained, lr=0.0, betas=(0.9, 0.98), eps=1e-9)
        self.scaler = torch.amp.GradScaler(
            self.world.device.type, enabled=config.precision == "fp16"
        )
        self.net: torch.nn.Module = self.model
        if self.world.distributed:
            cuda = self.world.device.type == "cuda"
            self.net = DistributedDataParallel(
                self.model,
                device_ids=[self.world.device] if cuda else None,
                # The buffers (position table, logits bias) are constant: no sync at each forward.
                forward_sync_buffers=False,
            )

    def load_state(self, state: dict[str, object]) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        except (ValueError, KeyError) as error:
            raise CheckpointError(
                f"{self.out_dir}: the optimizer state does not fit this model ({error})"
            ) from None
        self.state = TrainerState(**state["trainer"])  # type: ignore[arg-type]
        self.saved_step = self.state.step
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])  # type: ignore[arg-type]
        if state.get("data") is not None:
            self.position = DataPosition.from_dict(state["data"])  # type: ignore[arg-type]
        rng = state.get("rng") or []
        if self.world.rank < len(rng):  # type: ignore[arg-type]
            restore_rng(rng[self.world.rank])  # type: ignore[index]

    def save(self, stream: BatchStream | None = None) -> None:
        """Every rank calls this (the random states are gathered); rank 0 writes."""
        rng = self.world.gather(rng_state(self.world.device))
        if self.world.is_main:
            self.saving = True
            try:
                self._write(stream, rng)
            finally:
                self.saving = False
        self.saved_step = self.state.step
        if self.after_save is not None:
            self.after_save()

    def _write(self, stream: BatchStream | None, rng: list[Any]) -> None:
        trainer_state = {
            "optimizer": self.optimizer.state_dict(),
            "trainer": dataclasses.asdict(self.state),
            "train_config": dataclasses.asdict(self.config),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "data": stream.position.to_dict() if stream is not None else None,
            "rng": rng,  # per rank, for a resume on as many ranks
            "world_size": self.world.world_size,
            "corpus": self.corpus,
        }
        save_checkpoint(self.out_dir, self.model, self.tokenizer, trainer_state)
        if self.config.keep_checkpoints > 0:
            save_step_weights(
                self.out_dir, self.model, self.state.step, self.config.keep_checkpoints
            )

    def step(self, stream: BatchStream, batch: Sequence[int]) -> float:
        """One optimizer step on a global batch of pair indices; returns its mean loss."""
        world, config = self.world, self.config
        lr = learning_rate(self.state.step + 1, self.model.config.d_model, config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        share = rank_share(batch, world.rank, world.world_size)
        n_global, n_local = stream.n_target_tokens(batch), stream.n_target_tokens(share)
        # A rank with no pair in a small batch still joins the gradient sum, with weight 0.
        local = collate_pairs(stream.pairs, share or list(batch[:1])).to(world.device)
        with torch.autocast(
            world.device.type,
            dtype=PRECISIONS[config.precision],
            enabled=config.precision != "fp32",
        ):
            logits = self.net(local.src_ids, local.src_mask, local.tgt_in, local.tgt_mask)
        loss = loss_fn(logits.float(), local.tgt_out, config.label_smoothing)  # local mean
        # DDP averages gradients over ranks: weight each rank's mean by its share of the tokens.
        weight = n_local * world.world_size / n_global
        objective = loss if weight == 1.0 else loss * weight
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward()  # type: ignore[no-untyped-call]
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], config.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.step += 1
        self.state.tokens += stream.n_tokens(batch)
        if not world.distributed:
            return loss.item()
        total = world.all_reduce_sum(loss.detach().float().cpu()[None] * (n_local / n_global))
        return float(total[0])

    def fit(
        self, train: TokenizedPairs | Sequence[Example], valid: Sequence[Example]
    ) -> dict[str, float]:
        """Train until `max_steps` (or the `max_minutes` guard); returns the last validation.

        Every rank calls this; the metrics are rank 0's (empty on the others)."""
        config, world = self.config, self.world
        if not isinstance(train, TokenizedPairs):
            train = TokenizedPairs.from_rows(
                [(e.src, e.tgt) for e in train], self.model.config.vocab_size
            )
        stream = BatchStream(train, config.max_tokens, seed=config.seed)
        if self.position is not None:
            stream.seek(self.position)
        save_every = config.save_every or config.valid_every
        budget = config.max_minutes * 60 if config.max_minutes > 0 else math.inf
        self.model.train()
        metrics: dict[str, float] = {}
        validated = -1
        if self.state.step == 0 and world.is_main:  # a fresh run: no kept weights of another
            shutil.rmtree(self.out_dir / STEPS_DIR, ignore_errors=True)
        progress = Progress(self.state, config.max_steps, self.out_dir, world.is_main)
        try:  # the bar ends its line even when a step fails
            while self.state.step < config.max_steps and not self._out_of_time(budget):
                started = time.perf_counter()
                tokens_before = self.state.tokens
                epoch, batch = next(stream)
                loss = self.step(stream, batch)
                self.state.train_seconds += time.perf_counter() - started
                progress.update(epoch, loss, self.state.tokens - tokens_before)
                if self.state.step % config.valid_every == 0 and world.is_main:
                    metrics = validate(self.model, valid, config.max_tokens, world.device)
                    progress.write(self._report(metrics))
                    validated = self.state.step
                if self.state.step % save_every == 0:
                    self.save(stream)
        finally:
            progress.close()
        if self.state.step < config.max_steps and world.is_main:
            print(f"stopped by the --max-minutes guard at step {self.state.step}")
        if self.saved_step != self.state.step:  # the same on every rank
            self.save(stream)
        if world.is_main and validated != self.state.step:
            metrics = validate(self.model, valid, config.max_tokens, world.device)
            print(self._report(metrics))
        return metrics

    def _out_of_time(self, budget: float) -> bool:
        """Rank 0's clock decides for every rank, so that all stop at the same step."""
        if budget == math.inf:
            return False
        over = torch.tensor([float(self.state.train_seconds >= budget and self.world.is_main)])
        return bool(self.world.all_reduce_sum(over)[0] > 0)

    def _report(self, metrics: dict[str, float]) -> str:
        s = self.state
        return (
            f"step {s.step}  {s.train_seconds / 60:.1f} min"
            f"  {s.tokens / max(s.train_seconds, 1e-9):,.0f} tok/s"
            f"  valid loss {metrics['valid_loss']:.4f}  valid exact {metrics['valid_exact']:.2%}"
        )


class Progress:
    """Rank 0's view of the run: the progress bar (steps / total, ETA, smoothed loss, tokens/s)
    and DIR/train_log.jsonl, one line per step (step, epoch, loss, tokens, seconds) appended to
    across resumes. The loss is the global batch's mean, the same on any number of ranks."""

    def __init__(self, state: TrainerState, total: int, out_dir: Path, enabled: bool) -> None:
        self.state = state
        self.bar = tqdm(
            total=total, initial=state.step, unit="step", dynamic_ncols=True, disable=not enabled
        )
        self._log = None
        if enabled:
            out_dir.mkdir(parents=True, exist_ok=True)
            path = out_dir / TRAIN_LOG_FILE
            # Keep the steps of the checkpoint resumed from: a crashed run's later lines go.
            kept = []
            if path.is_file() and state.step > 0:
                lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                kept = [line for line in lines if json.loads(line)["step"] <= state.step]
            path.write_text("".join(kept), encoding="utf-8")
            self._log = path.open("a", encoding="utf-8")
        self._tokens, self._since, self._smoothed = 0, time.perf_counter(), math.nan

    def update(self, epoch: int, loss: float, tokens: int) -> None:
        state = self.state
        if self._log is not None:
            line = {
                "step": state.step,
                "epoch": epoch,
                "loss": loss,
                "tokens": state.tokens,
                "seconds": round(state.train_seconds, 3),
            }
            self._log.write(json.dumps(line) + "\n")
            self._log.flush()
        smoothed = self._smoothed
        self._smoothed = loss if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * loss
        self._tokens += tokens
        self.bar.update(1)
        if state.step % 10 == 0:
            now = time.perf_counter()
            rate = self._tokens / (now - self._since)
            self.bar.set_postfix_str(f"epoch {epoch} loss {self._smoothed:.3f} {rate:,.0f} tok/s")
            self._tokens, self._since = 0, now

    def write(self, line: str) -> None:
        self.bar.write(line)

    def close(self) -> None:
        self.bar.close()
        if self._log is not None:
            self._log.close()


def rng_state(device: torch.device) -> dict[str, Tensor]:
    """The torch random state of this process (dropout draws from it)."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
