"""`pip install .`: the wheel holds the package and the embedded demo model, and the installed package finds it."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_installed_package_finds_the_embedded_model(tmp_path):
    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    for name in ("lrm", "models"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE_WEIGHT"):
        shutil.copy(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist")],
                   check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("openlrm_demo-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True)
    code = ("import lrm; m = lrm.load_model('lrm-demo-shapes'); "
            "print(lrm.__file__); print(m.source); print(lrm.model_defaults('lrm-demo-shapes').foreground_ratio)")
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    package, source, ratio = out.stdout.split()
    site = str((tmp_path / "site").resolve())
    assert package.startswith(site) and source.startswith(site)  # the installed copy, not the checkout
    assert float(ratio) == 0.6
    assert (tmp_path / "site" / "bin" / "openlrm").is_file()  # the CLI's entry point
