"""The experiment scripts drive the real search: configs/search.yaml composed with Hydra and run
through ``run_search`` (not a search assembled by hand); the GPU suite's plumbing, dry run on a CPU."""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments"))

import bench_search  # noqa: E402
import framework_overhead  # noqa: E402


def test_bench_composes_the_search_config_with_its_workload(tmp_path):
    args = SimpleNamespace(num_train=300, num_val=100, batch_size=32, eval_batch_size=64, C=8, layers=5,
                           generations=1, drop_path=0.2, lr=0.05, seed=3, device="cpu")
    cfg = bench_search.compose_search(args, ["search.executor=concurrent_pair"], 4, tmp_path)
    # the workload as asked, on top of what configs/search.yaml and its groups give
    assert cfg.data._target_ == "relnas.data.SyntheticDataModule" and cfg.data.num_train == 400
    assert cfg.search.train_portion == 0.75 and cfg.search.population_size == 4 and cfg.search.lr == 0.05
    assert (cfg.supernet.C, cfg.supernet.layers, cfg.data.batch_size) == (8, 5, 32)
    assert cfg.search.executor == "concurrent_pair" and cfg.trainer.accelerator == "cpu"
    assert cfg.strategy._target_.endswith("RelativeNAS") and cfg.module.cuda_graphs == "auto"  # the config's own nodes
    assert cfg.paths.output_dir == str(tmp_path)


def test_framework_overhead_runs_the_search_entry_function(tmp_path, monkeypatch, capsys):
    import logging

    import relnas.search.run as run_mod

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):  # the script quiets them: restored after
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "level", logger.level)

    seen = []
    real = run_mod.run_search

    def spy(cfg, run_dir=None):
        result = real(cfg, run_dir)
        seen.append(list(csv.DictReader(open(Path(run_dir) / "generations.csv"))))
        return result

    monkeypatch.setattr(run_mod, "run_search", spy)
    monkeypatch.setattr(framework_overhead, "WORKLOAD", [o.replace("supernet.C=16", "supernet.C=4").replace(
        "supernet.layers=8", "supernet.layers=3") for o in framework_overhead.WORKLOAD])
    threads = torch.get_num_threads()
    try:
        assert framework_overhead.main(["--population", "2", "--generations", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script runs on one thread
    # warm-up, short and long searches went through run_search: 1, 1 and 2 generations of history
    assert [len(rows) for rows in seen] == [1, 1, 2]
    out = capsys.readouterr().out
    assert "framework overhead:" in out and "ms per candidate" in out


def test_transfer_speed_times_the_composed_recipes(tmp_path):
    import json

    import transfer_speed

    out = tmp_path / "speed.json"
    assert transfer_speed.main(["--device", "cpu", "--tiny", "--tasks", "detection,segmentation", "--steps", "1",
                                "--warmup", "1", "--results", str(tmp_path / "speed.md"), "--json", str(out)]) == 0
    det, seg = json.loads(out.read_text())
    # the recipes' lengths, by hand: 200 epochs x ceil(16551 VOC07+12 trainval images / batch 2); 80K iterations
    assert det["recipe_iterations"] == 200 * 8276 and seg["recipe_iterations"] == 80000
    assert (det["batch"], det["input_size"], seg["input_size"]) == (2, [96, 96], [64, 64])
    assert det["timed_steps"] == 1 and det["s_per_iter"] > 0
    assert det["recipe_hours"] == det["s_per_iter"] * 200 * 8276 / 3600
    assert "| detection | RelativeNAS | 2 x 96x96 |" in (tmp_path / "speed.md").read_text()


def test_kernel_profile_kinds_of_real_kernel_names():
    import kernel_profile

    # kernel names as CUDA/cuDNN and PyTorch print them in a profile, with their kind read by hand
    cases = {
        "void at::native::(anonymous namespace)::conv_depthwise2d_grad_weight_kernel<float, int>(...)":
            "depthwise weight-grad",
        "void at::native::(anonymous namespace)::conv_depthwise2d_forward_kernel<3, float, int>(...)": "depthwise",
        "sm90_xmma_wgrad_implicit_gemm_indexed_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize64x64x32": "conv weight-grad",
        "void cudnn::cnn::wgrad_alg0_engine<float, 128, 6, 7, 3, 3, 5, false, 512>(...)": "conv weight-grad",
        "sm90_xmma_dgrad_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x64x32": "conv data-grad",
        "sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32_f32_nhwckrsc_nhwc_tilesize128x64x32": "conv forward",
        "void implicit_convolve_sgemm<float, float, 128, 5, 5, 3, 3, 3, 1, false, false, true>(...)": "conv forward",
        "void cudnn::bn_bw_1C11_kernel_new<float, float, float2, 512, true, 1>(...)": "batchnorm",
        "void at::native::batch_norm_backward_kernel<float, float, float, int>(...)": "batchnorm",
        "void at::native::(anonymous namespace)::max_pool_backward_nhwc<float, float>(...)": "pooling",
        "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::func_wrapper_t<...>>>(...)":
            "reduction",
        "Memcpy DtoD (Device -> Device)": "copy/layout",
        "void cudnn::engines_precompiled::nchwToNhwcKernel<float, float, float, false, true, 0>(...)": "copy/layout",
        "void at::native::vectorized_elementwise_kernel<4, at::native::(anonymous namespace)::launch_clamp_scalar"
        "(...)::{lambda(float)#1}, std::array<char*, 2ul> >(...)": "elementwise",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "TensorListMetadata<3>, at::native::(anonymous namespace)::PointwiseOpScalarFunctor<float, 3, 2, 0>>(...)":
            "elementwise",
        "aten::convolution_backward": "conv backward (CPU: both)",
        "aten::mkldnn_convolution": "conv forward",
        "aten::native_batch_norm_backward": "batchnorm",
        "ncclDevKernel_Generic": "other",
    }
    assert {name: kernel_profile.kind_of(name) for name in cases} == cases


def test_kernel_profile_dry_run_on_cpu(tmp_path, capsys):
    import json

    import kernel_profile

    md, js = tmp_path / "kp.md", tmp_path / "kp.json"
    assert kernel_profile.main(["--device", "cpu", "--batch", "8", "--C", "4", "--layers", "3", "--steps", "1",
                                "--warmup", "1", "--candidates", "1", "--settings", "nchw-fp32,nhwc-bf16",
                                "--results", str(md), "--json", str(js)]) == 0
    rows = json.loads(js.read_text())
    assert [(r["layout"], r["precision"]) for r in rows] == [("nchw", "fp32"), ("nhwc", "bf16")]
    for r in rows:
        # one step of a cell network runs convolutions forward and backward and BatchNorm
        assert {"conv forward", "conv backward (CPU: both)", "batchnorm"} <= set(r["by_kind_ms"])
        assert r["kernels_per_step"] > 100 and 0 < r["kernel_ms_per_step"]
    assert "| nhwc bf16 |" in md.read_text()
    try:
        kernel_profile.main(["--device", "cpu", "--settings", "nchw-fp16"])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a bad --settings entry must stop the script")
    assert "nchw-fp16" in capsys.readouterr().err


def test_warmup_profile_dry_run_on_cpu(tmp_path):
    import json

    import warmup_profile

    js = tmp_path / "w.json"
    assert warmup_profile.main(["--device", "cpu", "--C", "4", "--layers", "3", "--batch", "8", "--eval-batch", "16",
                                "--candidates", "2", "--steps", "3", "--val-steps", "2", "--results",
                                str(tmp_path / "w.md"), "--json", str(js)]) == 0
    r = json.loads(js.read_text())
    # 2 candidates x (compile, 3 train steps, 2 val steps, release) after the device and weight-set phases
    assert len(r["phases"]) == 2 + 2 * (1 + 3 + 2 + 1)
    assert [len(c["train_s"]) for c in r["candidates"]] == [3, 3] and [len(c["val_s"]) for c in r["candidates"]] == [2, 2]
    assert r["graphs"] is False and all(c["graph_stats"]["captures"] == 0 for c in r["candidates"])
    assert "| 2 |" in (tmp_path / "w.md").read_text()


# ---------------------------------------------------------------------- the GPU suite, dry run on a CPU
def _suite(tmp_path, *stages, **env):
    import os
    import subprocess

    out = tmp_path / "out"
    full = {**os.environ, "PYTHONPATH": str(ROOT), "DEVICE": "cpu", "TINY": "1", "OUT": str(out), **env}
    proc = subprocess.run(["bash", str(ROOT / "experiments" / "gpu_suite.sh"), *stages], env=full,
                          capture_output=True, text=True, timeout=900)
    return proc, out


def _per_candidate(run_dir):
    """Seconds per candidate of each generation, read by hand: generations.csv's time over the history rows."""
    hist = list(csv.DictReader(open(run_dir / "history.csv")))
    gens = list(csv.DictReader(open(run_dir / "generations.csv")))
    return [float(g["time_s"]) / sum(h["generation"] == g["generation"] for h in hist) for g in gens]


def test_the_gpu_suite_refuses_an_unknown_stage_before_it_runs_anything(tmp_path):
    proc, out = _suite(tmp_path, "generation", "nope")
    assert proc.returncode == 2
    assert "unknown stage 'nope'" in proc.stderr and "generation" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
def test_the_gpu_suite_dry_run_writes_each_stage_and_the_summary(tmp_path):
    proc, out = _suite(tmp_path, "tests", "generation", "variants", VARIANTS="default= nchw=search.channels_last=false")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    env = (out / "env.txt").read_text()
    assert "command: DEVICE=cpu TINY=1 bash experiments/gpu_suite.sh tests generation variants" in env
    assert "date: " in env and "host: " in env and "commit: " in env
    assert "skipped" in (out / "gpu_tests.txt").read_text()  # the GPU tests need a GPU
    runs = out / "runs"
    # TINY sizes: one generation of 2 for the headline stage, 2 generations of 2 per variant
    assert len(_per_candidate(runs / "gen_default")) == 1
    assert [len(_per_candidate(runs / f"variant_{n}")) for n in ("default", "nchw")] == [2, 2]
    assert "search.channels_last=false" in (runs / "variant_nchw" / ".hydra" / "overrides.yaml").read_text()
    summary = (out / "summary.md").read_text()
    assert f"| gen_default | **{_per_candidate(runs / 'gen_default')[0]:.2f}** |" in summary
    nchw = _per_candidate(runs / "variant_nchw")
    assert f"| nchw | search.channels_last=false | {nchw[0]:.2f} | {nchw[1]:.2f} |" in summary
    assert "authors' 13.9 s" not in summary  # tiny sizes: no comparison with the paper-size figure


@pytest.mark.slow
def test_a_failing_stage_is_recorded_and_the_suite_exits_1(tmp_path):
    # an odd population is refused by RelativeNAS in one line: the stage fails, the summary says so
    proc, out = _suite(tmp_path, "variants", VARIANTS="odd=", VARIANT_POP="3")
    assert proc.returncode == 1
    assert "error: " in (out / "variant_odd.log").read_text()
    summary = (out / "summary.md").read_text()
    assert "| variant_odd | 2 |" in summary and "| odd | (defaults) | - | - |" in summary
