"""The peer benchmark: this project's engine against CTranslate2 on the same weights.

    python -m bench.vs_ctranslate2 [--checkpoint checkpoints/default] [--sentences 1024]
                                   [--rounds 3] [--work /tmp/vs_ct2] [--quick]

Converts the checkpoint to a CTranslate2 model (bench/ctranslate2_model.py; fp32 and int8),
exports an int8 bundle beside the shipped fp32 one, checks that greedy outputs are identical on
the test split, then times both engines on the same length-sorted batches of test sentences:
greedy at batch 1/8/32/64 and beam 4 at batch 8, 1 and 2 threads, fp32 and int8. This project
runs as the service does, minus the scheduler: `Seq2SeqRunner` over ONNX Runtime, each batch
encoded then stepped until every row finished. CTranslate2 runs `translate_batch`. Every
(engine, setting) runs in its own process (each runtime brings its own thread pool) and the
rounds alternate engines. Prints the table, writes bench/results/vs_ctranslate2.json and draws
bench/results/vs_ctranslate2.png (tokens/s against batch size). Timings, not pass/fail.
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


def settings(quick: bool) -> list[Setting]:
    found = [
        Setting("greedy", batch, threads, "fp32") for threads in (1, 2) for batch in (1, 8, 32, 64)
    ]
    found += [Setting("beam4", 8, threads, "fp32") for threads in (1, 2)]
    found += [Setting("greedy", 32, threads, "int8") for threads in (1, 2)]
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
    def __init__(self, model_dir: Path, threads: int, beam_size: int, vocab: list[str]) -> None:
        import ctranslate2

        self.translator = ctranslate2.Translator(
            str(model_dir), device="cpu", intra_threads=threads, inter_threads=1
        )
        self.beam_size = beam_size
        self.vocab = vocab
        self.ids = {piece: i for i, piece in enumerate(vocab)}

    def translate(self, batch: list[list[int]]) -> list[list[int]]:
        results = self.translator.translate_batch(
            [[self.vocab[i] for i in src] for src in batch],
            beam_size=self.beam_size,
            max_decoding_length=CHECK_LIMIT,
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
            work / f"ct2-{setting.precision}", setting.threads, setting.beam_size, vocab
        )
    groups = batches(sources, setting.batch)
    engine.translate(groups[len(groups) // 2])
    started = time.perf_counter()
    outputs = [out for group in groups for out in engine.translate(group)]
    seconds = time.perf_counter() - started
    tokens = sum(len(o) + 1 for o in outputs)  # + </s>, as both engines generate it
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
    parser.add_argument("--sentences", type=int, default=1024, help="timed test sentences")
    parser.add_argument("--check-sentences", type=int, default=0, help="0: the whole test split")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="batch 1 and 32, and beam 4 only")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    prepare(args.checkpoint, args.work)
    # Workers read the sources from a file: building them imports torch, whose OpenMP runtime
    # beside CTranslate2's slows CTranslate2's 2-thread runs several times.
    (args.work / "sources.json").write_text(json.dumps(test_sources(args.checkpoint, 0)))
    common = {
        "checkpoint": str(args.checkpoint),
        "bundle": str(args.bundle),
        "work": str(args.work),
    }
    check = Setting("greedy", 64, 2, "fp32")
    outputs = {
        engine: run_worker(
            {**common, "engine": engine, "setting": asdict(check), "outputs": True,
             "sentences": args.check_sentences}
        )["outputs"]
        for engine in ("ours", "ctranslate2")
    }  # fmt: skip
    identical = sum(a == b for a, b in zip(outputs["ours"], outputs["ctranslate2"], strict=True))
    print(f"greedy outputs identical on {identical:,} of {len(outputs['ours']):,} test sentences")
    figures: dict[tuple[str, Setting], list[float]] = {}
    for round_index in range(args.rounds):
        for setting in settings(args.quick):
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
    for setting in settings(args.quick):
        ours = statistics.median(figures[("ours", setting)])
        theirs = statistics.median(figures[("ctranslate2", setting)])
        rows.append(
            {**asdict(setting), "ours_tokens_per_s": round(ours), "ctranslate2_tokens_per_s":
             round(theirs), "ratio": round(ours / theirs, 2), "identical": identical,
             "checked": len(outputs["ours"])}
        )  # fmt: skip
    print(f"\n{'setting':<42}{'this project':>14}{'CTranslate2':>13}{'ratio':>8}")
    for row, setting in zip(rows, settings(args.quick), strict=True):
        print(
            f"{setting.label():<42}{row['ours_tokens_per_s']:>14,}"
            f"{row['ctranslate2_tokens_per_s']:>13,}{row['ratio']:>8.2f}"
        )
    write_results("vs_ctranslate2", rows)
    plot(rows, ROOT / "bench" / "results" / "vs_ctranslate2.png")
    print("drawn: bench/results/vs_ctranslate2.png")


if __name__ == "__main__":
    main()
