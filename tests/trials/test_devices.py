"""Trials across devices: a checkpoint saved on one device resumes on another. Needs CUDA for the
cross-device cases (skipped where this process sees no GPU); the CPU round trip through the
trainable's loading path runs everywhere."""

from __future__ import annotations

import io

import pytest
import torch

from nxmiformer.compression import compressed_modules
from nxmiformer.trials import DataConfig, DenseConfig, TrialConfig, run_trial

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (this process sees none)")


@pytest.fixture
def make_config(tiny_model_dir, synthetic_glue_dir, tmp_path):
    def make(device):
        data = DataConfig(task="sst2", data_dir=str(synthetic_glue_dir), max_length=16, seed=0)
        dense = DenseConfig(model=str(tiny_model_dir), steps=4, batch_size=8, device="cpu")
        return TrialConfig(data=data, dense=dense, steps=8, batch_size=8, lr=1e-3, admm_interval=2, eval_every=3,
                           cache_dir=str(tmp_path / "cache"), threads=1, device=device)

    return make


def saved_and_loaded(state: dict) -> dict:
    """What the trainable does with a checkpoint: torch.save, then torch.load onto the CPU."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False, map_location="cpu")


@pytest.mark.parametrize("saved_on,resumed_on", [
    ("cpu", "cpu"),
    pytest.param("cuda", "cpu", marks=CUDA), pytest.param("cpu", "cuda", marks=CUDA),
])
def test_a_checkpoint_resumes_on_another_device(make_config, saved_on, resumed_on):
    states = {}
    full = run_trial("2:4:int8", make_config(saved_on), keep_model=True,
                     report=lambda row, state: states.setdefault(row["phase"], state()))
    for phase in ("admm", "qat"):
        resumed = run_trial("2:4:int8", make_config(resumed_on), keep_model=True,
                            resume=saved_and_loaded(states[phase]))
        assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history]
        assert next(resumed.model.parameters()).device.type == resumed_on
        for name, module in compressed_modules(resumed.model).items():
            assert module.mask.device == module.weight.device, name
            if phase == "qat":  # hardened before the save: the same frozen masks
                assert torch.equal(module.mask.cpu(), compressed_modules(full.model)[name].mask.cpu()), name
        if saved_on == resumed_on:  # exact; across devices the kernels differ in the last bits
            assert resumed.history == full.history
