"""The peer benchmark: this project's engine against CTranslate2 on the same weights.

    python -m bench.vs_ctranslate2 [--checkpoint checkpoints/default] [--sentences 1024]
                                   [--rounds 3] [--work /tmp/vs_ct2] [--quick]
    python -m bench.vs_ctranslate2 --model base [--sentences 128]

Converts the checkpoint to a CTranslate2 model (bench/ctranslate2_model.py; fp32 and int8),
exports an int8 bundle beside the shipped fp32 one, checks that greedy outputs are identical on
the test split, then times both engines on the same length-sorted batches of test sentences:
greedy at batch 1/8/32/64 and beam 4 at batch 8, 1 and 2 threads, fp32 and int8. This project
runs as the service does, minus the scheduler: `Seq2SeqRunner` over ONNX Runtime, each batch
encoded then stepped until every row finished. CTranslate2 runs `translate_batch`. Every
(engine, setting) runs in its own process (each runtime brings its own thread pool) and the
rounds alternate engines. Prints the table, writes bench/results/vs_ctranslate2.json and draws
bench/results/vs_ctranslate2.png (tokens/s against batch size). Timings, not pass/fail.

`--model base` does the same for a model of the paper's base / OPUS-MT layer shape (d_model 512,
8 heads, d_ff 2048, 6 + 6 layers) with random weights and the default tokenizer's vocabulary
(2,048 pieces; a checkpoint's vocabulary is its tokenizer's; OPUS-MT's 58k would make the output
projection a larger share of both engines' work), greedy at batch 1 and 32: end-of-sentence is
suppressed on both sides (this project: the checkpoint's decoding rule `suppress_tokens`;
CTranslate2: `min_decoding_length`), so both generate CHECK_LIMIT tokens per sentence. Results
go to vs_ctranslate2_base.json / .png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.service_load import ROOT, write_results
from model.tokenizer import EOS_ID

CHECK_LIMIT = 64  # generated tokens at most, end-of-sentence included, on both engines


@dataclass(frozen=True)
class Setting:
    search: str  # "greedy" or "beam4"
    batch: int
    threads: int
    precision: str  # "fp32" or "int8"

    @property
    def beam_size(self) -> int:
        return 4 if self.search == "beam4" else 1

    def label(self) -> str:
        return f"{self.search}, batch {self.batch}, {self.threads} thread(s), {self.precision}"


def settings(quick: bool, model: str = "default") -> list[Setting]:
    if model == "base":
        return [
            Setting("greedy", batch, threads, "fp32") for threads in (1, 2) for batch in (1, 32)
        ]
    found = [
        Setting("greedy", batch, threads, "fp32") for threads in (1, 2) for batch in (1, 8, 32, 64)
    ]
    found += [Setting("beam4", 8, threads, "fp32") for threads in (1, 2)]
    found += [Setting("greedy", batch, threads, "int8") for threads in (1, 2) for batch in (1, 32)]
    if quick:
        found = [s for s in found if s.batch in (1, 32) or s.search == "beam4"]
    return found


def test_sources(checkpoint: Path, count: int) -> list[list[int]]:
    """Source ids of the first `count` (0: all) test sentences of the checkpoint's corpus."""
    from model.builtin_corpus import builtin_corpus
    from model.checkpoint import METRICS_FILE, load_tokenizer

    corpus = json.loads((checkpoint / METRICS_FILE).read_text())["corpus"]
    pairs = builtin_corpus(corpus["size"], corpus["seed"]).test
    tokenizer = load_tokenizer(checkpoint)
    return [tokenizer.encode_source(p.source, p.lang) for p in pairs[: count or None]]


def batches(sources: list[list[int]], size: int) -> list[list[list[int]]]:
    ordered = sorted(sources, key=len)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


class OurEngine:
    """A fixed batch through the service's runner: encode, admit, step until all finished."""

    def __init__(self, bundle: Path, threads: int, beam_size: int) -> None:
        from service.engine import TranslationEngine
        from service.metrics import Metrics
        from service.settings import ServiceSettings
        from service.types import RequestedOptions

        settings = ServiceSettings(device="cpu", threads=threads, warmup=False)
        engine = TranslationEngine.load(bundle, settings.engine(), Metrics().for_model("bench"))
        self.runner = engine.runner
        self.options = engine.validator.options(
            RequestedOptions(beam_size=beam_size, max_output_tokens=CHECK_LIMIT, n_best=1)
        )

    def translate(self, batch: list[list[int]]) -> list[list[int]]:
        from service.types import SegmentJob, StepPlan

        jobs = [SegmentJob(i, tuple(src), self.options) for i, src in enumerate(batch)]
        plan = StepPlan(admit=(self.runner.encode(jobs),))
        done: dict[int, list[int]] = {}
        while len(done) < len(jobs):
            result = self.runner.step(plan)
            plan = StepPlan()
            for update in result.updates:
                if update.hypotheses:
                    ids = list(update.hypotheses[0].ids)
                    done[update.seq_id] = ids[:-1] if ids and ids[-1] == EOS_ID else ids
        return [done[i] for i in range(len(jobs))]


class CTranslate2Engine:
    def __init__(
        self, model_dir: Path, threads: int, beam_size: int, vocab: list[str], no_eos: bool
    ) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(
            str(model_dir), device="cpu", intra_threads=threads, inter_threads=1
        )
        self.beam_size = beam_size
        self.vocab = vocab
        self.ids = {piece: i for i, piece in enumerate(vocab)}
        self.min_length = CHECK_LIMIT if no_eos else 0  # end-of-sentence suppressed until then

    def translate(self, batch: list[list[int]]) -> list[list[int]]:
        results = self.translator.translate_batch(
            [[self.vocab[i] for i in src] for src in batch],
            beam_size=self.beam_size,
            max_decoding_length=CHECK_LIMIT,
            min_decoding_length=self.min_length,
            length_penalty=1.0,
        )
        return [[self.ids[p] for p in r.hypotheses[0]] for r in results]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One (engine, setting) in this process: warm up on one batch, then time every batch."""
    setting = Setting(**spec["setting"])
    work = Path(spec["work"])
    sources = json.loads((work / "sources.json").read_text())[: spec["sentences"] or None]
    if spec["engine"] == "ours":
        bundle = Path(spec["bundle"]) if setting.precision == "fp32" else work / "bundle-int8"
        engine: OurEngine | CTranslate2Engine = OurEngine(
            bundle, setting.threads, setting.beam_size
        )
    else:
        vocab = json.loads((work / "vocab.json").read_text())
        engine = CTranslate2Engine(
            work / f"ct2-{setting.precision}",
            setting.threads,
            setting.beam_size,
            vocab,
            no_eos=spec.get("no_eos", False),
        )
    groups = batches(sources, setting.batch)
    engine.translate(groups[len(groups) // 2])
    started = time.perf_counter()
    outputs = [out for group in groups for out in engine.translate(group)]
    seconds = time.perf_counter() - started
    eos = 0 if spec.get("no_eos") else 1  # + </s>, as both engines generate it unless suppressed
    tokens = sum(len(o) + eos for o in outputs)
    return {"seconds": seconds, "tokens": tokens, "outputs": outputs if spec["outputs"] else None}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.vs_ctranslate2", "--worker", json.dumps(spec)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(
            f"worker {spec['engine']} {spec['setting']} failed:\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def _current_bundle(path: Path) -> bool:
    """A bundle at `path` that this code reads (an older format is exported again)."""
    from service.bundle import BundleError, load_bundle

    try:
        load_bundle(path, verify_graphs=False)
    except BundleError:
        return False
    return True


def prepare_base(default_checkpoint: Path, work: Path) -> Path:
    """A random model of the base / OPUS-MT shape in work/checkpoint, its fp32 bundle (decoding
    rule: end-of-sentence suppressed) in work/bundle and CTranslate2 model in work/ct2-fp32, on
    the default checkpoint's tokenizer."""
    import shutil

    import torch

    from bench.ctranslate2_model import convert
    from export.manifest import NATIVE_DECODING
    from export.pipeline import export_bundle
    from model.checkpoint import TOKENIZER_FILE, CheckpointConfig, load_tokenizer, save_weights
    from model.config import ModelConfig
    from model.tokenizer import Tokenizer
    from model.transformer import Transformer

    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(default_checkpoint)
    assert isinstance(tokenizer, Tokenizer)
    vocab = tokenizer.pieces()
    (work / "vocab.json").write_text(json.dumps(vocab))
    checkpoint = work / "checkpoint"
    if not (checkpoint / "config.json").is_file():
        torch.manual_seed(0)
        config = ModelConfig.from_name(
            "base", vocab_size=len(vocab), dropout=0.0, max_positions=256
        )
        model = Transformer(config).eval()
        checkpoint.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(default_checkpoint / TOKENIZER_FILE, checkpoint / TOKENIZER_FILE)
        save_weights(checkpoint, model.state_dict())
        rules = {**NATIVE_DECODING["rules"], "suppress_tokens": [config.eos_id]}
        saved = CheckpointConfig(
            model=config,
            languages=list(tokenizer.languages),
            generation={**NATIVE_DECODING, "rules": rules},
        )
        (checkpoint / "config.json").write_text(json.dumps(saved.to_dict(), indent=2) + "\n")
    if not _current_bundle(work / "bundle"):
        export_bundle(checkpoint, work / "bundle", "fp32", [])
    if not (work / "ct2-fp32" / "model.bin").is_file():
        convert(checkpoint, work / "ct2-fp32")
    return work / "bundle"


def prepare(checkpoint: Path, work: Path) -> None:
    """CTranslate2 models (fp32, int8), their vocabulary, and this project's int8 bundle."""
    from bench.ctranslate2_model import convert
    from model.checkpoint import load_tokenizer
    from model.tokenizer import Tokenizer

    work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(checkpoint)
    assert isinstance(tokenizer, Tokenizer)
    (work / "vocab.json").write_text(json.dumps(tokenizer.pieces()))
    for precision, quantization in (("fp32", None), ("int8", "int8")):
        if not (work / f"ct2-{precision}" / "model.bin").is_file():
            convert(checkpoint, work / f"ct2-{precision}", quantization)
    if not _current_bundle(work / "bundle-int8"):
        subprocess.run(
            [sys.executable, "-m", "export", "--checkpoint", str(checkpoint), "--out",
             str(work / "bundle-int8"), "--precision", "int8"],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, threads in zip(axes, (1, 2), strict=True):
        for engine, style in (("ours", "o-"), ("ctranslate2", "s--")):
            points = sorted(
                (r["batch"], r[f"{engine}_tokens_per_s"])
                for r in rows
                if r["threads"] == threads and r["search"] == "greedy" and r["precision"] == "fp32"
            )
            axis.plot(*zip(*points, strict=True), style, label=engine)
        axis.set_xscale("log", base=2)
        axis.set_title(f"greedy fp32, {threads} thread(s)")
        axis.set_xlabel("batch size (sentences)")
        axis.grid(True, alpha=0.3)
    axes[0].set_ylabel("output tokens / s")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "default")
    parser.add_argument("--bundle", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--work", type=Path, default=Path("/tmp/vs_ct2"))
    parser.add_argument(
        "--sentences", type=int, help="timed test sentences (default 1024; 128 with --model base)"
    )
    parser.add_argument("--check-sentences", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32, and beam 4 only")
    parser.add_argument(
        "--model", choices=("default", "base"), default="default",
        help="base: a random model of the base / OPUS-MT shape, end-of-sentence suppressed",
    )  # fmt: skip
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    base = args.model == "base"
    args.sentences = args.sentences or (128 if base else 1024)
    bundle = args.bundle
    if base:
        args.work = args.work / "base"
        bundle = prepare_base(args.checkpoint, args.work)
    else:
        prepare(args.checkpoint, args.work)
    # Workers read the sources from a file: building them imports torch, whose OpenMP runtime
    # beside CTranslate2's slows CTranslate2's 2-thread runs several times.
    (args.work / "sources.json").write_text(json.dumps(test_sources(args.checkpoint, 0)))
    common = {
        "checkpoint": str(args.checkpoint),
        "bundle": str(bundle),
        "work": str(args.work),
        "no_eos": base,
    }
    check = Setting("greedy", 64 if not base else 32, 2, "fp32")
    check_sentences = args.sentences if base else args.check_sentences
    outputs = {
        engine: run_worker(
            {**common, "engine": engine, "setting": asdict(check), "outputs": True,
             "sentences": check_sentences}
        )["outputs"]
        for engine in ("ours", "ctranslate2")
    }  # fmt: skip
    identical = sum(a == b for a, b in zip(outputs["ours"], outputs["ctranslate2"], strict=True))
    lengths = {len(o) for engine in outputs.values() for o in engine}
    print(
        f"greedy outputs identical on {identical:,} of {len(outputs['ours']):,} test sentences"
        + (f" (output lengths {sorted(lengths)})" if base else "")
    )
    figures: dict[tuple[str, Setting], list[float]] = {}
    for round_index in range(args.rounds):
        for setting in settings(args.quick, args.model):
            engines = ("ours", "ctranslate2") if round_index % 2 == 0 else ("ctranslate2", "ours")
            for engine in engines:
                result = run_worker(
                    {**common, "engine": engine, "setting": asdict(setting), "outputs": False,
                     "sentences": args.sentences}
                )  # fmt: skip
                figures.setdefault((engine, setting), []).append(
                    result["tokens"] / result["seconds"]
                )
        print(f"round {round_index + 1} of {args.rounds} done")
    rows = []
    for setting in settings(args.quick, args.model):
        ours = statistics.median(figures[("ours", setting)])
        theirs = statistics.median(figures[("ctranslate2", setting)])
        rows.append(
            {**asdict(setting), "ours_tokens_per_s": round(ours), "ctranslate2_tokens_per_s":
             round(theirs), "ratio": round(ours / theirs, 2), "identical": identical,
             "checked": len(outputs["ours"])}
        )  # fmt: skip
    print(f"\n{'setting':<42}{'this project':>14}{'CTranslate2':>13}{'ratio':>8}")
    for row, setting in zip(rows, settings(args.quick, args.model), strict=True):
        print(
            f"{setting.label():<42}{row['ours_tokens_per_s']:>14,}"
            f"{row['ctranslate2_tokens_per_s']:>13,}{row['ratio']:>8.2f}"
        )
    name = "vs_ctranslate2_base" if base else "vs_ctranslate2"
    write_results(name, rows)
    plot(rows, ROOT / "bench" / "results" / f"{name}.png")
    print(f"drawn: bench/results/{name}.png")


if __name__ == "__main__":
    main()
