"""--dtype: auto follows the hardware check, bfloat16 runs the encoder under autocast and keeps everything
else float32, and the choice is part of the cache key, the index and the training config."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from tiny import make_synthetic_beir

from sbmoe.commands import main
from sbmoe.errors import SbmoeError
from sbmoe.experiments.config import build_experiment_config
from sbmoe.modeling import load_model
from sbmoe.modeling.precision import encoder_autocast, resolve_dtype
from sbmoe.retrieval.encode import EmbeddingCache, encode_cached, encode_pooled
from sbmoe.training.config import TrainingConfig, resolve_config
from sbmoe.training.trainer import train

IDS = ["a", "b", "c", "d"]
TEXTS = ["gene protein expression", "cancer drug trial outcome", "virus blood", "a short one"]
CPU = torch.device("cpu")


def fake_cpu(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)


@pytest.mark.parametrize(
    "amx, avx512_bf16, expected",
    [(False, False, torch.float32), (True, False, torch.bfloat16), (False, True, torch.bfloat16)],
)
def test_auto_follows_the_cpu_capability(monkeypatch, amx, avx512_bf16, expected):
    fake_cpu(monkeypatch, amx, avx512_bf16)
    assert resolve_dtype("auto", CPU) == expected
    assert resolve_dtype("float32", CPU) == torch.float32


def test_explicit_bfloat16_without_support_warns_and_is_honoured(monkeypatch, caplog):
    fake_cpu(monkeypatch, False, False)
    monkeypatch.setattr("sbmoe.modeling.precision._warned", set())
    with caplog.at_level(logging.WARNING, logger="sbmoe.modeling.precision"):
        assert resolve_dtype("bfloat16", CPU) == torch.bfloat16
    assert "slower than float32" in caplog.text
    fake_cpu(monkeypatch, True, True)
    monkeypatch.setattr("sbmoe.modeling.precision._warned", set())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sbmoe.modeling.precision"):
        resolve_dtype("bfloat16", CPU)
    assert caplog.text == ""


def test_unknown_dtype_is_an_error_naming_the_choices(tiny_beir, tiny_encoder, capsys):
    with pytest.raises(ValueError, match=r"\['float32', 'bfloat16', 'auto'\].*'float16'"):
        resolve_dtype("float16", CPU)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", str(tiny_encoder), "--dataset", str(tiny_beir), "--dtype", "half"])
    assert exit_info.value.code == 2
    assert "choose from 'float32', 'bfloat16', 'auto'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="dtype must be one of"):
        TrainingConfig(base="b", dataset="d", output_dir="o", dtype="fp16")


def test_bfloat16_encoding_is_close_to_float32_and_returns_float32(tiny_encoder):
    model, tokenizer = load_model(tiny_encoder)
    full = encode_pooled(model, tokenizer, TEXTS, "document", progress=False).vectors
    half = encode_pooled(model, tokenizer, TEXTS, "document", progress=False, dtype=torch.bfloat16).vectors
    assert half.dtype == np.float32
    assert not np.array_equal(full, half)  # autocast did run the encoder in bfloat16
    cosine = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cosine.min() > 0.99
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights untouched


def test_the_dtype_is_part_of_the_cache_key(tiny_encoder, tmp_path):
    model, tokenizer = load_model(tiny_encoder)
    cache = EmbeddingCache(tmp_path)
    assert cache.key(model, "document", IDS, TEXTS, torch.float32) == cache.key(model, "document", IDS, TEXTS)
    assert cache.key(model, "document", IDS, TEXTS, torch.bfloat16) != cache.key(
        model, "document", IDS, TEXTS
    )
    full, _ = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False)
    half, hit = encode_cached(model, tokenizer, IDS, TEXTS, cache=cache, progress=False, dtype=torch.bfloat16)
    assert hit is False  # a float32 entry is not reused for bfloat16
    meta = json.loads(
        (cache.folder(cache.key(model, "document", IDS, TEXTS, torch.bfloat16)) / "meta.json").read_text()
    )
    assert meta["dtype"] == "bfloat16"


def test_autocast_context_is_a_no_op_for_float32():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with encoder_autocast(CPU, torch.float32):
        assert layer(x).dtype == torch.float32
    with encoder_autocast(CPU, torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        encoder_autocast(CPU, torch.float16)


def test_bfloat16_training_keeps_float32_weights_and_routing(tiny_encoder, tmp_path, monkeypatch):
    data = make_synthetic_beir(tmp_path / "synthetic")
    seen = []
    from sbmoe.modeling import moe

    original = moe.SBMoEBlock._router_scores

    def spy(self, x):
        scores = original(self, x)
        seen.append((x.dtype, scores.dtype))
        return scores

    monkeypatch.setattr(moe.SBMoEBlock, "_router_scores", spy)
    config = TrainingConfig(
        base=str(tiny_encoder), dataset=str(data), output_dir=str(tmp_path / "run"), batch_size=4, epochs=1,
        num_experts=3, progress=False, dtype="bfloat16",
    )  # fmt: skip
    train(config)
    assert seen and all(scores == torch.float32 for _, scores in seen)
    saved = json.loads((tmp_path / "run" / "training_config.json").read_text())["config"]
    assert saved["dtype"] == "bfloat16"
    model, _ = load_model(tmp_path / "run")
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_legacy_bf16_setting_means_dtype_bfloat16(caplog):
    with caplog.at_level(logging.WARNING):
        config = resolve_config({"base": "b", "dataset": "d", "output_dir": "o", "bf16": True}, {})
    assert config.dtype == "bfloat16"
    assert "deprecated" in caplog.text
    assert resolve_config({"base": "b", "dataset": "d", "output_dir": "o"}, {"bf16": None}).dtype == "float32"


def test_grid_dtype_is_top_level_and_checked(tiny_beir):
    raw = {"name": "g", "bases": ["b"], "train_datasets": ["t"], "systems": ["zero-shot"]}
    assert build_experiment_config({**raw, "dtype": "auto"}, where="g.yaml", check_data=False).dtype == "auto"
    with pytest.raises(SbmoeError, match="dtype must be one of"):
        build_experiment_config({**raw, "dtype": "fp8"}, where="g.yaml", check_data=False)
    with pytest.raises(SbmoeError, match="set dtype at the top"):
        build_experiment_config({**raw, "training": {"dtype": "auto"}}, where="g.yaml", check_data=False)
