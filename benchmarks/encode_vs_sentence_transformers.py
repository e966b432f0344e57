"""Corpus encoding speed: sbmoe vs sentence-transformers (and ONNX Runtime), same model, same texts.

Every method encodes the same documents with the same all-MiniLM-L6-v2 folder (mean pooling, normalised,
max length 256 as the folder's own settings say, batch 32). The methods (``--methods``, comma-separated):

* ``sbmoe``: ``apply_head(model, encode_pooled(model, tokenizer, texts, "document"))``
* ``sbmoe-bfloat16``: the same with ``encode_pooled(..., dtype=torch.bfloat16)`` (the encoder's forward
  under ``torch.autocast("cpu", dtype=torch.bfloat16)``, weights float32)
* ``sentence-transformers``: ``SentenceTransformer(folder, device="cpu").encode(texts, ...)``
* ``sentence-transformers-bfloat16``: the same ``encode`` call inside
  ``torch.autocast("cpu", dtype=torch.bfloat16)``
* ``onnxruntime``: the folder's transformers ``BertModel`` exported once with ``torch.onnx.export``
  (TorchScript exporter, dynamic batch and sequence axes; not timed), run by
  ``onnxruntime.InferenceSession`` (float32, ``intra_op_num_threads`` = torch's thread count,
  ``ORT_ENABLE_ALL`` graph optimisations); texts sorted and batched as sentence-transformers does,
  tokenised by the folder's tokenizer, mean pooling and L2 normalisation in numpy. Skipped, with the
  reason printed, when onnxruntime / onnx are missing (``pip install -e '.[bench]'``) or the export fails.

The default is ``sbmoe,sentence-transformers`` (the float32 comparison, target sbmoe / ST >= 1.0x).
``--bf16-comparison`` selects all five: the report then gives sbmoe bfloat16's speed over each other
method (targets: >= 2.5x sentence-transformers float32, >= 1.0x sentence-transformers bfloat16 and
ONNX Runtime) and every method's minimum cosine against sentence-transformers float32. bfloat16 is fast
only on CPUs with AMX or AVX512-BF16; elsewhere torch emulates it and it is several times slower than
float32. The report and the JSON record the CPU model, both capabilities and what
``resolve_dtype("auto", cpu)`` picks.

Each timing covers the whole call (tokenisation, batching, inference, pooling, normalisation). After one
warm-up call per method, the measured calls are interleaved (A B C A B C ...) so that a slow spell of the
shared machine hits all alike; the report gives each method's median and the ratios of the medians.

Usage (the documented configuration is the default):

    .venv/bin/python benchmarks/encode_vs_sentence_transformers.py [--num-docs 1000] [--json OUT]
    .venv/bin/python benchmarks/encode_vs_sentence_transformers.py --bf16-comparison [--json OUT]
    .venv/bin/python benchmarks/encode_vs_sentence_transformers.py --methods sbmoe,sbmoe-bfloat16
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentence_transformers
import torch
import transformers
from _common import cpu_report
from sentence_transformers import SentenceTransformer

from sbmoe.data import load_dataset
from sbmoe.modeling import load_model, resolve_model_name
from sbmoe.retrieval.encode import apply_head, encode_pooled

TARGET_RATIO = 1.0  # sbmoe passages/s over sentence-transformers passages/s (float32 both)
SBMOE, SBMOE_BF16 = "sbmoe", "sbmoe-bfloat16"
ST, ST_BF16, ORT = "sentence-transformers", "sentence-transformers-bfloat16", "onnxruntime"
METHODS = (SBMOE, SBMOE_BF16, ST, ST_BF16, ORT)
DEFAULT_METHODS = (SBMOE, ST)
# sbmoe bfloat16 passages/s over each other method's (None: reported, no target)
BF16_TARGETS: dict[str, float | None] = {SBMOE: None, ST: 2.5, ST_BF16: 1.0, ORT: 1.0}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm-l6", help="model alias or sentence-transformers folder")
    parser.add_argument("--dataset", default="scifact", help="BEIR collection whose corpus is encoded")
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("SBMOE_DATA", "/work/shared/datasets"),
        help="folder holding the collections (default: $SBMOE_DATA or /work/shared/datasets)",
    )
    parser.add_argument("--num-docs", type=int, default=1000, help="encode the first N documents")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="measured calls per method (interleaved)")
    parser.add_argument("--warmup-docs", type=int, default=64, help="documents in each warm-up call")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--methods",
        type=parse_methods,
        default=DEFAULT_METHODS,
        help=f"comma-separated, from {','.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    chosen.add_argument(
        "--bf16-comparison",
        dest="methods",
        action="store_const",
        const=METHODS,
        help="all five methods: the bfloat16 comparison (same as --methods " + ",".join(METHODS) + ")",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write results as JSON")
    return parser.parse_args()


def parse_methods(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    return names


def timed(fn: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def onnx_encoder(
    folder: str, tokenizer, max_length: int, batch_size: int, work: Path
) -> tuple[Callable[[list[str]], np.ndarray] | None, str | None, float]:
    """An ONNX Runtime encoder of `folder`'s BertModel: (encode function, None, export seconds), or
    (None, the reason, 0.0) when it cannot run here."""
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        import onnxruntime as ort
    except ImportError as error:
        return None, f"{error.name or error} is not installed (pip install -e '.[bench]')", 0.0

    from transformers import AutoModel

    class LastHiddenState(torch.nn.Module):  # keyword arguments in, one tensor out: what the exporter wants
        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    path = work / "model.onnx"
    start = time.perf_counter()
    try:
        bert = AutoModel.from_pretrained(folder)
        hidden_size = bert.config.hidden_size
        # eval() on the wrapper: the exporter puts the module back in the mode it found it in.
        wrapper = LastHiddenState(bert).eval()
        example = tokenizer(["an example passage", "a second, longer example passage"], padding=True,
                            return_tensors="pt")  # fmt: skip
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                wrapper,
                tuple(example[name] for name in names),
                str(path),
                input_names=names,
                output_names=["last_hidden_state"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*names, "last_hidden_state"]},
                opset_version=17,
                dynamo=False,  # the torch.export-based default needs onnxscript
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # an exporter or runtime that cannot handle this model: skip, not crash
        return None, f"export or session failed: {type(error).__name__}: {error}", 0.0
    export_seconds = time.perf_counter() - start
    inputs = [given.name for given in session.get_inputs()]

    def encode(texts: list[str]) -> np.ndarray:
        # As SentenceTransformer.encode: longest (in characters) first, batches of batch_size.
        order = np.argsort([-len(text) for text in texts])
        out = np.empty((len(texts), hidden_size), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start : start + batch_size]
            features = tokenizer([texts[i] for i in batch], padding=True, truncation=True,
                                 max_length=max_length, return_tensors="np")  # fmt: skip
            hidden = session.run(None, {name: features[name].astype(np.int64) for name in inputs})[0]
            mask = features["attention_mask"][..., None].astype(np.float32)  # [b, L, 1]
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            out[batch] = pooled
        return out

    return encode, None, export_seconds


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def matmul_flops(lengths: list[int], config) -> float:
    """Floating-point operations of the encoder's matrix products over documents of these token counts
    (unpadded): per layer and token, Q, K, V and the output projection (4 H^2 multiply-adds) and the
    feed-forward pair (2 H I); per layer and document of n tokens, the attention scores and their weighted sum
    (2 n^2 H). Two operations per multiply-add. Embeddings, layer norms, softmax and pooling are left out."""
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 4 * hidden * hidden + 2 * hidden * inner
    return 2.0 * layers * sum(n * per_token + 2 * n * n * hidden for n in lengths)


def fma_peak(threads: int) -> dict[str, object]:
    """The CPU's peak multiply-add rate on `threads` cores at the clock /proc/cpuinfo reports, for float32
    and (with AVX512-BF16) bfloat16 dot products, which do twice the multiply-adds of a float32 FMA. Assumed
    per core and cycle: two FMA pipes of the widest vector width the core executes at full rate (AMD before
    Zen 5 splits 512-bit vectors into two 256-bit halves), so float32 FLOPs = 2 pipes x lanes x 2."""
    info = open("/proc/cpuinfo", encoding="utf-8").read()
    flags = set(next(line for line in info.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    mhz = float(next(line for line in info.splitlines() if line.startswith("cpu MHz")).split(":", 1)[1])
    amd = "AuthenticAMD" in info
    if "avx512f" in flags and not amd:
        lanes, isa = 16, "AVX-512, two 512-bit FMA pipes"
    elif "avx512f" in flags or "avx2" in flags:
        lanes = 8
        isa = (
            "AVX-512 on two 256-bit FMA pipes (AMD)" if "avx512f" in flags else "AVX2, two 256-bit FMA pipes"
        )
    else:
        lanes, isa = 4, "SSE"
    float32 = threads * mhz * 1e6 * 2 * lanes * 2 / 1e9
    peak = {"isa": isa, "mhz": mhz, "cores": threads, "float32_gflops": float32}
    if "avx512_bf16" in flags:
        peak["bfloat16_gflops"] = 2 * float32
    if "amx_tile" in flags:
        peak["amx"] = "AMX present: its bfloat16 peak is far above the vector units' (not modelled here)"
    return peak


def main() -> None:
    args = parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    cpu = cpu_report()

    texts = load_dataset(args.dataset, args.data_dir).corpus.document_texts()[: args.num_docs]
    folder = resolve_model_name(args.model)

    model, tokenizer = load_model(args.model)
    st_model = SentenceTransformer(folder, device="cpu")
    sbmoe_max_length = model.config.max_length_for("document")
    if st_model.max_seq_length != sbmoe_max_length:
        raise SystemExit(f"max lengths differ: sbmoe {sbmoe_max_length}, ST {st_model.max_seq_length}")
    token_ids = tokenizer(texts, truncation=True, max_length=sbmoe_max_length)["input_ids"]
    lengths = [len(ids) for ids in token_ids]

    def sbmoe_runner(dtype: torch.dtype) -> Callable[[list[str]], np.ndarray]:
        def run(batch: list[str]) -> np.ndarray:
            pooled = encode_pooled(
                model, tokenizer, batch, "document", batch_size=args.batch_size, progress=False, dtype=dtype
            )
            out = apply_head(model, pooled)
            # apply_head returns (embeddings, top experts) since the MoE block; a bare array before it.
            return out[0] if isinstance(out, tuple) else out

        return run

    def run_st(batch: list[str]) -> np.ndarray:
        embeddings = st_model.encode(
            batch,
            batch_size=args.batch_size,
            normalize_embeddings=False,  # the folder's own Normalize module normalises
            convert_to_numpy=True,  # float32 (sentence-transformers upcasts bfloat16 outputs)
            show_progress_bar=False,
        )
        return np.asarray(embeddings, dtype=np.float32)

    def run_st_bf16(batch: list[str]) -> np.ndarray:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_st(batch)

    runners: dict[str, Callable[[list[str]], np.ndarray]] = {
        SBMOE: sbmoe_runner(torch.float32),
        SBMOE_BF16: sbmoe_runner(torch.bfloat16),
        ST: run_st,
        ST_BF16: run_st_bf16,
    }
    skipped: dict[str, str] = {}
    onnx_export_seconds = None
    with tempfile.TemporaryDirectory(prefix="sbmoe-onnx-") as work:
        if ORT in args.methods:
            encode_onnx, reason, onnx_export_seconds = onnx_encoder(
                folder, tokenizer, sbmoe_max_length, args.batch_size, Path(work)
            )
            if encode_onnx is None:
                skipped[ORT] = reason
                print(f"skipping {ORT}: {reason}")
            else:
                runners[ORT] = encode_onnx
        methods = {name: runners[name] for name in args.methods if name not in skipped}
        if not methods:
            raise SystemExit("no method left to run")
        for run in methods.values():  # warm-up: first-call allocations, thread pools, lazy imports
            run(texts[: args.warmup_docs])

        seconds: dict[str, list[float]] = {name: [] for name in methods}
        outputs: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in methods.items():
                elapsed, outputs[name] = timed(lambda run=run: run(texts))
                seconds[name].append(elapsed)

    rate = {name: len(texts) / statistics.median(values) for name, values in seconds.items()}
    reference_note = ""
    if ST not in outputs:  # the cosine reference, computed once, untimed
        outputs_reference = run_st(texts)
        reference_note = " (computed once, untimed: not among the methods)"
    else:
        outputs_reference = outputs.get(ST)
    cosines = {name: min_cosine(out, outputs_reference) for name, out in outputs.items()}

    versions = {
        "sbmoe": _version("sbmoe"),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    if ORT in args.methods:
        versions["onnxruntime"] = _version("onnxruntime", missing="not installed")
        versions["onnx"] = _version("onnx", missing="not installed")
    print(f"date {datetime.date.today().isoformat()}  " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"cpu {cpu['model_name']}  AMX tile {cpu['amx_tile']}  AVX512-BF16 {cpu['avx512_bf16']}  "
        f"dtype auto -> {cpu['auto_dtype']}"
    )
    print(
        f"{len(texts)} {args.dataset} documents (tokens: mean {statistics.mean(lengths):.1f}, "
        f"max {max(lengths)}), max length {sbmoe_max_length}, batch {args.batch_size}, "
        f"torch threads {torch.get_num_threads()}, {args.repeats} interleaved repeats after a warm-up"
    )
    if onnx_export_seconds is not None and ORT in methods:
        print(f"ONNX export (not timed in the runs): {onnx_export_seconds:.1f} s")
    flops = matmul_flops(lengths, model.encoder.config)
    gflops = {name: flops / statistics.median(values) / 1e9 for name, values in seconds.items()}
    peak = fma_peak(torch.get_num_threads())
    print(
        f"matrix products: {flops / 1e9:.1f} GFLOP for the {len(texts)} documents "
        f"({flops / sum(lengths) / 1e6:.1f} MFLOP a token); CPU peak ({peak['isa']}, "
        f"{peak['cores']} cores at {peak['mhz']:.0f} MHz): float32 {peak['float32_gflops']:.0f} GFLOP/s"
        + (f", bfloat16 {peak['bfloat16_gflops']:.0f} GFLOP/s" if "bfloat16_gflops" in peak else "")
    )
    print()
    width = max([24, *(len(name) + 2 for name in seconds)])
    print(f"{'method':<{width}}{'median s':>10}{'passages/s':>12}{'GFLOP/s':>10}   all runs (s)")
    for name, values in seconds.items():
        runs = " ".join(f"{v:.2f}" for v in values)
        median = statistics.median(values)
        print(f"{name:<{width}}{median:>10.2f}{rate[name]:>12.1f}{gflops[name]:>10.1f}   {runs}")
    for name, reason in skipped.items():
        print(f"{name:<{width}}skipped: {reason}")
    print()

    result_ratio: dict[str, object] = {}
    if SBMOE in outputs and ST in outputs:  # the float32 comparison, as before the bfloat16 methods
        a, b = outputs[SBMOE], outputs[ST]
        max_abs_diff = float(np.abs(a - b).max())
        ratio = rate[SBMOE] / rate[ST]
        verdict = "met" if ratio >= TARGET_RATIO else f"missed by {(TARGET_RATIO - ratio) * 100:.1f} %"
        print(f"speed ratio sbmoe / ST: {ratio:.3f}x  (target >= {TARGET_RATIO:.1f}x: {verdict})")
        print(f"max |sbmoe - ST| over the {a.shape[0]} x {a.shape[1]} embeddings: {max_abs_diff:.2e}")
        result_ratio = {
            "ratio_sbmoe_over_st": ratio,
            "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO,
            "max_abs_diff": max_abs_diff,
        }

    bf16_ratios: dict[str, dict[str, object]] = {}
    if SBMOE_BF16 in rate:
        others = [name for name in rate if name != SBMOE_BF16]
        if others:
            print()
            print("speed of sbmoe bfloat16 over each method:")
        for name in others:
            ratio = rate[SBMOE_BF16] / rate[name]
            target = BF16_TARGETS[name]
            if target is None:
                verdict = "no target"
            elif ratio >= target:
                verdict = f"target >= {target:.1f}x: met"
            else:
                verdict = f"target >= {target:.1f}x: missed by {(target - ratio) / target * 100:.1f} %"
            print(f"  / {name:<{width}}{ratio:>8.3f}x  ({verdict})")
            bf16_ratios[name] = {
                "ratio": ratio,
                "target": target,
                "target_met": None if target is None else ratio >= target,
            }

    print()
    print(f"minimum cosine against sentence-transformers float32{reference_note}:")
    for name, value in cosines.items():
        print(f"  {name:<{width}}{value:.6f}")

    if args.json:
        result = {
            "benchmark": "encode_vs_sentence_transformers",
            "date": datetime.date.today().isoformat(),
            "versions": versions,
            "cpu": cpu,
            "config": {
                "model": args.model,
                "dataset": args.dataset,
                "num_docs": len(texts),
                "batch_size": args.batch_size,
                "max_length": sbmoe_max_length,
                "repeats": args.repeats,
                "torch_threads": torch.get_num_threads(),
                "mean_tokens": statistics.mean(lengths),
                "methods": list(args.methods),
            },
            "seconds": seconds,
            "passages_per_second": rate,
            "matmul_gflop": flops / 1e9,
            "gflops_per_second": gflops,
            "cpu_peak": peak,
            **result_ratio,
            "sbmoe_bfloat16_over": bf16_ratios,
            "min_cosine_vs_st_float32": cosines,
            "skipped": skipped,
            "onnx_export_seconds": onnx_export_seconds,
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _version(package: str, missing: str | None = None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        if missing is None:
            raise
        return missing


if __name__ == "__main__":
    main()
