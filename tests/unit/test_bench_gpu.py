"""`benchmarks/gpu.py`: its smoke run (a tiny model through every configuration on the CPU) writes every field the
full run writes, with real values; and the pure parts it measures with (frames, FLOPs, padding, the tables)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForCTC

from benchmarks.gpu import (
    CONFIG_FIELDS,
    CONFIGS,
    EFFECTIVE_BATCH,
    PRESET,
    REPORT_FIELDS,
    SECTION_FIELDS,
    SMOKE_CONFIG,
    XLSR_300M,
    conv_lengths,
    padding_fraction,
    peak_flops,
    preset_batch_table,
    training_flops,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """The smoke run's JSON and stdout; the CPU forced even where a GPU is visible (the smoke run is the CPU's)."""
    tmp = tmp_path_factory.mktemp("bench_gpu")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--device", "cpu", "--tmp", str(tmp),
                           "--out", str(tmp / "gpu.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((tmp / "gpu.json").read_text(encoding="utf-8")), done.stdout


def test_smoke_json_has_every_field_of_the_full_run(smoke):
    report, _ = smoke
    assert set(report) == set(REPORT_FIELDS)
    for config in report["configs"]:
        assert set(config) == set(CONFIG_FIELDS), config["name"]
    for section, fields in SECTION_FIELDS.items():
        assert set(report[section]) == set(fields), section
    assert report["smoke"] is True and report["pass"]["full_run_wall_s"] is None


def test_smoke_covers_every_configuration_with_real_measurements(smoke):
    report, stdout = smoke
    configs = report["configs"]
    assert {(c["dtype"], c["ewc"], c["batch_size"], c["attn_implementation"]) for c in configs} == set(CONFIGS)
    assert report["failed_configs"] == []
    for c in configs:
        assert c["error"] is None and c["oom"] is False, c["name"]
        assert c["batch_size"] * c["gradient_accumulation"] == EFFECTIVE_BATCH
        assert c["timed_utterances"] == EFFECTIVE_BATCH * c["timed_steps"]
        assert c["audio_hours_per_gpu_hour"] > 0 and c["utterances_per_s"] > 0 and c["model_flops_per_audio_s"] > 0
        assert 2 <= c["timed_mean_clip_s"] <= 10
        assert 0 <= c["padding_fraction"] < 1 and 0 <= c["epoch_padding_fraction"] < 1
        assert 0 <= c["loader_wait_fraction"] < 1
        assert c["audio_hours_per_gpu_hour_without_loader_wait"] >= c["audio_hours_per_gpu_hour"]
        assert c["attn_implementation_used"] == c["attn_implementation"]
        # what the core did, not what was asked: fp16 is ignored on the CPU, with its warning
        if c["dtype"] == "fp16":
            assert c["precision_used"] == "float32"
            assert any("fp16 requested but no GPU" in w for w in c["core_warnings"]), c["name"]
        else:
            assert c["precision_used"] == "bf16" and c["core_warnings"] == []
        assert c["mfu"] is None and c["peak_memory_allocated_bytes"] is None  # GPU-only, and said why
    assert {"mfu", "peak_memory_allocated_bytes"} <= set(report["null_fields_why"])
    padding = {c["batch_size"]: c["padding_fraction"] for c in configs if c["dtype"] == "bf16" and c["ewc"]}
    assert padding[4] <= padding[8] <= padding[16]  # the same sorted utterances, cut into smaller batches
    assert set(report["comparisons"]["ewc_over_plain_step_time"]) == {f"{d}-b{b}" for d in ("bf16", "fp16")
                                                                      for b in (4, 8, 16)}
    assert all(r > 0 for r in report["comparisons"]["ewc_over_plain_step_time"].values())
    fisher, evaluation, loader = report["fisher"], report["eval"], report["loader"]
    assert fisher["looped_utterances_per_s"] > 0 and fisher["batched_audio_s_per_s"] > 0
    assert fisher["fisher_over_train_audio_throughput"] > 0 and fisher["batch_size"] > 1
    assert evaluation["audio_hours_per_gpu_hour"] > 0 and evaluation["model_only_audio_hours_per_gpu_hour"] > 0
    assert loader["audio_s_per_s"] > 0 and loader["max_loader_wait_fraction"] < 1
    table = report["batch_size_table"]
    assert {gb: row["preset_batch_size"] for gb, row in table.items()} == {"16GB": 2, "24GB": 4, "40GB": 8, "80GB": 16}
    assert report["transformers"] and report["torch"] and report["settings"]["timed_steps"] >= 2
    lines = stdout.strip().splitlines()
    assert sum(line.startswith("[") for line in lines) == len(CONFIGS)
    assert lines[-1].endswith("gpu.json")


def test_frames_follow_the_model():
    config = Wav2Vec2Config(**SMOKE_CONFIG)
    model = Wav2Vec2ForCTC(config)
    for samples in (400, 16000, 16001, 160000):
        assert conv_lengths(config, samples)[-1] == int(model._get_feat_extract_output_lengths(torch.tensor(samples)))


def test_training_flops_of_xlsr_300m():
    config = Wav2Vec2Config(**XLSR_300M)
    trainable = 311_000_000
    one_second = training_flops(config, trainable, 16000)
    # 49 frames: 6·N per frame dominates (91 GFLOPs), the CNN's forward adds 4.9 (2.5 G MACs), attention 0.7
    assert 1.05 < one_second / (6 * trainable * 49) < 1.08
    assert training_flops(config, trainable, 160000) > 10 * one_second  # attention grows with the square


def test_padding_fraction_counts_padded_frames():
    assert padding_fraction([[0, 1]], [10, 10]) == 0
    assert padding_fraction([[0, 1], [2]], [10, 5, 7]) == pytest.approx(5 / 27)


def test_peak_flops_table_and_the_presets_batch_sizes():
    assert peak_flops("NVIDIA H100 80GB HBM3")["bf16"] == 989e12
    assert peak_flops("NVIDIA H100 PCIe")["fp16"] == 756e12
    assert peak_flops("NVIDIA H200")["bf16"] == 989e12
    assert peak_flops("Tesla V100-SXM2-16GB")["bf16"] is None
    assert peak_flops("cpu (x86_64)") is None
    assert preset_batch_table(ROOT / PRESET) == {16: 2, 24: 4, 40: 8, 80: 16}
