"""Frozen-encoder training after loading (issue 20): how long `sbmoe train --freeze-encoder` takes on
SciFact once the encoder is loaded and its pooled vectors come from the cache.

Two runs, each the exact command line (run in this process through `sbmoe.commands.main`):

    sbmoe train --base minilm-l6 --dataset scifact --system adapter --freeze-encoder
        --output-dir X --seed 1 --dtype bfloat16
    ... --system sbmoe --variant learned --router cluster --num-experts 6

Measured: the wall time from the end of the pooling (the encoder loaded, its pooled vectors read from
the embedding cache) to the saved model, and within it, by timing the trainer's own functions:

    setup        cluster prototypes (k-means), optimiser, training_config.json, the log
    steps        the training steps (forward, backward, optimiser, routing statistics)
    validation   `validate` at every validation
    checkpoints  `save_checkpoint` and `save_best_model`
    writes       train_log.jsonl lines, the final model and training_summary.json

The first run of each dtype fills the embedding cache (~4 minutes for the 5,183 documents); a warm-up run
takes that out of the measured repeats. Other jobs on the machine slow small tensor operations a lot:
the script reports the CPU seconds of this process and of all others during each run (from os.times
and /proc/stat), as BENCHMARKS.md asks.

Usage: python benchmarks/frozen_train_speed.py [--data-dir ../shared/datasets] [--repeats 3]
           [--cpu-threads N] [--json OUT]
--cpu-threads N adds that flag to both commands (the loop's threads; the default for a frozen run is 1).
Run it on another checkout with PYTHONPATH=<checkout>/src to time that code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from _common import cpu_report

SYSTEMS = {
    "adapter": ["--system", "adapter"],
    "cluster N=6": ["--system", "sbmoe", "--variant", "learned", "--router", "cluster", "--num-experts", "6"],
}
TARGETS = {"adapter": 4.0, "cluster N=6": 6.0}  # seconds after loading (issue 20)
PHASES = ("setup", "steps", "validation", "checkpoints", "writes")


def cpu_flags() -> list[str]:
    """The AMX and AVX-512 bfloat16 flags /proc/cpuinfo lists (what `lscpu | grep -o ...` shows)."""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        flags = re.findall(r"\b(amx[a-z_0-9]*|avx512_bf16)\b", cpuinfo.read())
    return sorted(set(flags))


def own_cpu_seconds() -> float:
    """CPU seconds of this process so far (user + system)."""
    times = os.times()
    return times.user + times.system


def busy_cpu_seconds() -> float:
    """CPU seconds of every process on the machine since boot, idle and iowait excluded (/proc/stat)."""
    with open("/proc/stat", encoding="ascii") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


class PhaseClock:
    """Wall time per phase, by wrapping the trainer's functions where the trainer looks them up."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.marks: dict[str, float] = {}
        self.cpu_at_pooled = (0.0, 0.0)  # (this process's CPU seconds, every process's)
        self._inner = 0.0  # time of the phases nested inside the loop (subtracted from "steps")

    def timed(self, phase: str, fn: Callable, nested: bool = True) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                self.seconds[phase] += elapsed
                if nested:
                    self._inner += elapsed

        return wrapper

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        from sbmoe.training import data, log, trainer

        pool_everything = data.CollectionData.pool_everything
        patches = [
            (data.CollectionData, "pool_everything", self._mark_after("pooled", pool_everything)),
            (trainer, "_train_epochs", self._loop(trainer._train_epochs)),
            (trainer, "_finish", self.timed("writes", trainer._finish, nested=False)),
            (trainer, "validate", self.timed("validation", trainer.validate)),
            (trainer, "save_checkpoint", self.timed("checkpoints", trainer.save_checkpoint)),
            (trainer, "save_best_model", self.timed("checkpoints", trainer.save_best_model)),
            (log.TrainingLog, "step", self.timed("writes", log.TrainingLog.step)),
            (log.TrainingLog, "validation", self.timed("writes", log.TrainingLog.validation)),
        ]  # fmt: skip
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        for owner, name, patched in patches:
            setattr(owner, name, patched)
        try:
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def _mark_after(self, mark: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            result = fn(*args, **kwargs)
            self.marks[mark] = time.perf_counter()  # the last collection's pooling ends the loading
            self.cpu_at_pooled = (own_cpu_seconds(), busy_cpu_seconds())
            return result

        return wrapper

    def _loop(self, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            self.seconds["setup"] = started - self.marks["pooled"]
            self._inner = 0.0
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds["steps"] = time.perf_counter() - started - self._inner

        return wrapper


def run_once(system: str, data_dir: str, dtype: str, folder: Path, extra: list[str]) -> dict:
    """One training run of `system`; its phases, its time after loading and the machine's load."""
    from sbmoe.commands import main

    argv = [
        "train", "--base", "minilm-l6", "--dataset", "scifact", "--data-dir", data_dir,
        *SYSTEMS[system], "--freeze-encoder", "--output-dir", str(folder), "--seed", "1", "--dtype", dtype,
        *extra,
    ]  # fmt: skip
    clock = PhaseClock()
    with clock.installed():
        started = time.perf_counter()
        if main(argv) != 0:
            raise RuntimeError(f"sbmoe {' '.join(argv)} failed")
        ended = time.perf_counter()
        own_after, busy_after = own_cpu_seconds(), busy_cpu_seconds()
    own_at_pooled, busy_at_pooled = clock.cpu_at_pooled  # CPU time after loading, as the wall time
    own, busy = own_after - own_at_pooled, busy_after - busy_at_pooled
    summary = json.loads((folder / "training_summary.json").read_text(encoding="utf-8"))
    return {
        "system": system,
        "after_loading_seconds": ended - clock.marks["pooled"],
        "loading_seconds": clock.marks["pooled"] - started,
        **{f"{phase}_seconds": clock.seconds[phase] for phase in PHASES},
        "own_cpu_seconds": own,
        "other_processes_cpu_seconds": max(0.0, busy - own),
        "wall_seconds": ended - started,
        "epochs_run": summary["epochs_run"],
        "last_validation_ndcg@10": summary["history"][-1]["ndcg@10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    )
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3, help="measured runs of each system")
    parser.add_argument("--cpu-threads", type=int, help="add --cpu-threads N to the commands")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    import torch
    import transformers

    import sbmoe

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    extra = [] if args.cpu_threads is None else ["--cpu-threads", str(args.cpu_threads)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_once("adapter", args.data_dir, args.dtype, tmp / "warm-up", extra)  # fills a cold cache
        for repeat in range(args.repeats):  # interleaved: A B A B ...
            for system in SYSTEMS:
                run = run_once(system, args.data_dir, args.dtype, tmp / f"{system}-{repeat}", extra)
                runs.append(run)
                print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in run.items()}))

    medians = {
        system: {
            key: statistics.median(run[key] for run in runs if run["system"] == system)
            for key in runs[0]
            if key.endswith("_seconds")
        }
        for system in SYSTEMS
    }
    report = {
        "cpu": cpu_report() | {"flags": cpu_flags()},
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "sbmoe": str(Path(sbmoe.__file__).parent),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "extra_flags": extra,
        "runs": runs,
        "medians": medians,
    }
    print(f"\nCPU: {report['cpu']['model_name']}; flags: {' '.join(report['cpu']['flags']) or 'none'}")
    print(f"torch {report['torch']} ({report['torch_threads']} threads), sbmoe from {report['sbmoe']}")
    flags = " ".join(["--dtype", args.dtype, *extra])
    print(f"median of {args.repeats} runs, seconds after loading ({flags}):\n")
    print("| system | after loading | " + " | ".join(PHASES) + " | own CPU s | others' CPU s | target |")
    print("|---|---:|" + "---:|" * len(PHASES) + "---:|---:|---|")
    for system, m in medians.items():
        verdict = "met" if m["after_loading_seconds"] <= TARGETS[system] else "missed"
        phases = " | ".join(f"{m[f'{phase}_seconds']:.2f}" for phase in PHASES)
        print(
            f"| {system} | {m['after_loading_seconds']:.2f} | {phases} | {m['own_cpu_seconds']:.1f} | "
            f"{m['other_processes_cpu_seconds']:.1f} | <= {TARGETS[system]:g} s: {verdict} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
