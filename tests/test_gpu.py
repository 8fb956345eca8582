"""The CUDA fast path (bf16 autocast, channels-last, data on the device, torch.compile).

These run only where a CUDA GPU is visible; CI has none, so they skip with that reason there.
"""

from __future__ import annotations

import pytest
import torch

from tdmr_search.pipeline.run import run_pipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible (the CPU path is tested elsewhere)"),
]


@pytest.mark.parametrize("method", ["tdmr", "scratch", "kd", "probe"])
def test_every_method_learns_on_the_gpu(method):
    """test_methods.py's runs on CUDA (bf16 autocast, channels-last): each still ends well above chance."""
    from test_methods import CHANCE, CONFIG

    from tdmr_search.config import config_from_dict

    result = run_pipeline(config_from_dict({**CONFIG, "device": "cuda", "method": method}))
    assert result.metrics["device"].startswith("cuda")
    assert result.metrics["test_acc"] >= 3 * CHANCE, result.metrics["test_acc"]


def test_auto_picks_the_gpu_and_compile_keeps_weights_loadable(tiny_config, digits_data):
    result = run_pipeline(tiny_config.replace({"device": "auto", "compile": True}), data=digits_data)
    assert result.metrics["device"].startswith("cuda")
    keys = set(result.model.state_dict())
    assert not any("_orig_mod" in k for k in keys)
