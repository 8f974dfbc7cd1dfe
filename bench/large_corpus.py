"""A corpus larger than the built-in one, end to end: prepare it, then train on it; peak memory.

    python -m bench.large_corpus [--pairs 2000000] [--work DIR] [--steps 200] [--preset small]

Writes a TSV of synthetic pairs (seeded: sentences of 4-40 pseudo-words in four target languages,
each translated word by word through a per-language lexicon and reordered), then runs
`python -m model.prepare` and `python -m model.train --corpus PREPARED` each in its own process
and reads that process's peak resident memory from the kernel (wait4's ru_maxrss). Prints a table;
results in bench/results/large_corpus.json. Never pass/fail.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.service_load import ROOT, write_results

LANGUAGES = ("de", "es", "fr", "it")
LEXICON_SIZE = 5000


def pseudo_words(rng: np.random.Generator, count: int) -> list[str]:
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    lengths = rng.integers(2, 10, size=count)
    return ["".join(rng.choice(letters, size=n)) for n in lengths]


def write_corpus(path: Path, pairs: int, seed: int = 1) -> None:
    """`lang<TAB>source<TAB>target` lines; a target is the source's words through the
    language's lexicon, with every pair of neighbouring words swapped."""
    rng = np.random.default_rng(seed)
    source_words = pseudo_words(rng, LEXICON_SIZE)
    lexicons = {lang: pseudo_words(rng, LEXICON_SIZE) for lang in LANGUAGES}
    chunk = 100_000
    with path.open("w", encoding="utf-8") as handle:
        for start in range(0, pairs, chunk):
            n = min(chunk, pairs - start)
            lengths = rng.integers(4, 41, size=n)
            # Zipf-like word frequencies, as in text: a few words are common.
            ids = np.minimum(rng.zipf(1.3, size=int(lengths.sum())) - 1, LEXICON_SIZE - 1)
            langs = rng.integers(0, len(LANGUAGES), size=n)
            offset = 0
            lines = []
            for length, lang_index in zip(lengths.tolist(), langs.tolist(), strict=True):
                words = ids[offset : offset + length].tolist()
                offset += length
                lang = LANGUAGES[lang_index]
                lexicon = lexicons[lang]
                swapped = [w for i in range(0, length - 1, 2) for w in (words[i + 1], words[i])]
                swapped += words[len(swapped) :]
                source = " ".join(source_words[w] for w in words)
                target = " ".join(lexicon[w] for w in swapped)
                lines.append(f"{lang}\t{source}\t{target}\n")
            handle.writelines(lines)


def measured(command: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, last output lines) of a child process."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return seconds, usage.ru_maxrss / 1024, "\n".join(output.splitlines()[-2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2_000_000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/large_corpus"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = args.work / f"synthetic-{args.pairs}.tsv"
    if not corpus.is_file():
        started = time.perf_counter()
        write_corpus(corpus, args.pairs)
        print(
            f"wrote {corpus} ({corpus.stat().st_size / 1e6:,.0f} MB) in"
            f" {time.perf_counter() - started:.0f} s"
        )
    prepared, checkpoint = args.work / "prepared", args.work / "checkpoint"
    python = [sys.executable, "-m"]
    stages = {
        "prepare": [
            *python, "model.prepare", "--corpus", str(corpus), "--preset", args.preset,
            "--out", str(prepared), "--force",
        ],
        "train": [
            *python, "model.train", "--corpus", str(prepared), "--preset", args.preset,
            "--out", str(checkpoint), "--max-steps", str(args.steps), "--valid-every",
            str(args.steps), "--no-evaluate",
        ],
    }  # fmt: skip
    rows = []
    for stage, command in stages.items():
        if stage == "train":
            shutil.rmtree(checkpoint, ignore_errors=True)
        seconds, peak_mb, tail = measured(command)
        rows.append({"stage": stage, "seconds": round(seconds, 1), "peak_rss_mb": round(peak_mb)})
        print(tail)
    on_disk = sum(f.stat().st_size for f in prepared.iterdir()) / 1e6
    print(
        f"\n{args.pairs:,} pairs ({corpus.stat().st_size / 1e6:,.0f} MB of TSV);"
        f" prepared: {on_disk:,.0f} MB on disk"
    )
    print(f"{'stage':<10}{'seconds':>10}{'peak RSS MB':>14}")
    for row in rows:
        print(f"{row['stage']:<10}{row['seconds']:>10}{row['peak_rss_mb']:>14}")
    meta = {"pairs": args.pairs, "preset": args.preset, "steps": args.steps}
    write_results("large_corpus", [{**meta, **row} for row in rows])


if __name__ == "__main__":
    main()
