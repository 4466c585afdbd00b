"""Test settings: never touch the network (each Hub miss would otherwise wait ~23 s), never need a GPU."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The servers' heartbeat every second (Gradio's default is 15 s): a test client that closes goes within a second.
os.environ.setdefault("GRADIO_HEARTBEAT_INTERVAL", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
REFCHECK = FIXTURES / "refcheck"
# rembg runs its real code path on a tiny local "red = foreground" ONNX model, never downloading anything.
os.environ["LRM_REMBG_MODEL_PATH"] = str(FIXTURES / "rembg" / "red_segmenter.onnx")
REFCHECK_MODELS = ("refcheck-tiny-1.1", "refcheck-tiny-eq-1.1", "refcheck-tiny-1.0", "refcheck-tiny-eq-1.0")


def psnr(a, b) -> float:
    """PSNR (dB) of images or colours a, b in [0, 1] (tensors or arrays of the same shape)."""
    import torch
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12)))


@pytest.fixture(scope="session")
def tiny_model():
    """The refcheck-tiny-1.1 fixture model (loaded once)."""
    import lrm
    return lrm.load_model(REFCHECK / "refcheck-tiny-1.1" / "model")
