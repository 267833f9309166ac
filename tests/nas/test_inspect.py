"""The inspect app (`python -m relnas.inspect`), run as a subprocess, plus the drawing helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from relnas import get_genotype


def _run(repo_root: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo_root) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HYDRA_FULL_ERROR", "0")
    cmd = [sys.executable, "-m", "relnas.inspect", *overrides, f"hydra.run.dir={tmp_path / 'run'}"]
    return subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=300)


def _final_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def test_inspect_cifar_small(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, "genotype=DARTS_V2", "network=cifar", "C=8", "layers=5", "num_classes=10")
    out = _final_json(proc)
    assert set(out) >= {"params_m", "mult_adds_m", "genotype", "network", "C", "layers", "num_classes", "input_size"}
    assert out["network"] == "cifar" and out["C"] == 8 and out["layers"] == 5 and out["input_size"] == 32
    assert get_genotype(out["genotype"]) == get_genotype("DARTS_V2")
    assert 0 < out["params_m"] < 0.2 and out["mult_adds_m"] > 0
    assert "mult-adds (M)" in proc.stdout and "reduction cells at  1, 3" in proc.stdout
    assert not (tmp_path / "run" / "normal.png").exists()


@pytest.mark.slow
def test_inspect_draw_imagenet_in_channels(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, "network=imagenet", "C=8", "layers=5", "num_classes=1000", "in_channels=1",
                "draw=true")
    out = _final_json(proc)
    assert out["network"] == "imagenet" and out["input_size"] == 224 and out["num_classes"] == 1000
    for name in ("normal.png", "reduce.png"):
        png = tmp_path / "run" / name
        assert png.is_file() and png.stat().st_size > 1000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert str(png) in proc.stdout


def test_inspect_genotype_file_and_input_size(repo_root, tmp_path):
    path = get_genotype("NASNet").save(tmp_path / "g.yaml")
    proc = _run(repo_root, tmp_path, f"genotype={path}", "C=8", "layers=5", "input_size=64")
    out = _final_json(proc)
    assert out["input_size"] == 64
    assert get_genotype(out["genotype"]) == get_genotype("NASNet")


def test_inspect_unknown_genotype(repo_root, tmp_path):
    proc = _run(repo_root, tmp_path, "genotype=NoSuchNet", "C=8", "layers=5")
    assert proc.returncode != 0
    assert "error:" in proc.stderr and "NoSuchNet" in proc.stderr
    for name in ("RelativeNAS", "DARTS_V2", "NASNet"):
        assert name in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_inspect_relativenas_defaults(repo_root, tmp_path):
    out = _final_json(_run(repo_root, tmp_path))
    assert out["genotype"] == get_genotype("RelativeNAS").to_dict()
    assert (out["network"], out["C"], out["layers"], out["num_classes"]) == ("cifar", 36, 20, 10)
    assert 3.8 < out["params_m"] < 4.05


def test_inspect_architecture_in_process():
    from relnas.inspect import inspect_architecture

    cfg = OmegaConf.create(dict(genotype="RelativeNAS", network="cifar", C=8, layers=5, num_classes=10,
                                auxiliary=True, in_channels=3, input_size=None))
    info = inspect_architecture(cfg)
    assert info["input_size"] == 32 and info["summary"]["cells"] == 5
    cfg.network = "mnist"
    with pytest.raises(KeyError, match="imagenet"):
        inspect_architecture(cfg)
    cfg.network, cfg.input_size = "imagenet", 32
    with pytest.raises(ValueError, match="32x32"):
        inspect_architecture(cfg)


@pytest.mark.parametrize("name", ["RelativeNAS", "AmoebaNet"])
def test_plot_genotype(tmp_path, name):
    from relnas.nas.draw import plot_genotype

    paths = plot_genotype(name, tmp_path, prefix="x_")
    assert [p.name for p in paths] == ["x_normal.png", "x_reduce.png"]
    assert all(p.is_file() and p.stat().st_size > 1000 for p in paths)
