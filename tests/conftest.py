"""Test settings: never touch the network (each Hub miss would otherwise wait ~23 s), never need a GPU."""

import os
import time

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


def processes(text: str) -> set[int]:
    """Ids of the processes whose command line (Ray sets its workers' titles there) holds `text`."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and text in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.add(int(entry.name))
        except OSError:
            pass
    return found


def wait_until(condition, timeout: float = 30.0) -> bool:
    """Polls `condition` every 0.2 s until it holds or `timeout` seconds pass -> whether it holds."""
    end = time.time() + timeout
    while time.time() < end:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def answers(url: str) -> bool:
    """Whether an HTTP server answers `url` with 200 OK."""
    import httpx
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


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
