"""torchrun with 2 CPU processes (gloo): same losses as one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import tiny_config

from koi_train.distributed import fsdp_runs_off_cuda

STEPS = 12
NEEDS_CPU_FSDP = pytest.mark.skipif(not fsdp_runs_off_cuda(), reason="FSDP2 runs on CPU (gloo) from torch 2.7")


def _run(args, cwd, nproc=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "koi_train"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
                    "-m", "koi_train"]
    return subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def _tails(result) -> str:
    """What a failed run printed: the end of stdout (which step it reached) and of stderr (why it died)."""
    return f"stdout:\n{result.stdout[-1500:]}\nstderr:\n{result.stderr[-3000:]}"


def _losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _config(prepared, tmp_path, name, strategy, batch_size, steps=STEPS):
    raw = tiny_config(prepared, tmp_path, name=name, train={"steps": steps, "batch_size": batch_size, "log_every": 1},
                      distributed={"strategy": strategy, "backend": "gloo" if strategy != "none" else "auto"},
                      checkpoint={"every": 6, "keep_last": 3})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(raw))
    return path


@pytest.fixture(scope="module")
def single(prepared, tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    result = _run(["run", str(_config(prepared, root, "single", "none", 8))], cwd=root)
    assert result.returncode == 0, _tails(result)
    return _losses(root / "single")


@pytest.mark.parametrize("strategy", ["ddp", pytest.param("fsdp", marks=NEEDS_CPU_FSDP)])
def test_two_processes_match_one_with_the_same_global_batch(prepared, tmp_path, single, strategy):
    result = _run(["run", str(_config(prepared, tmp_path, strategy, strategy, 4))], cwd=tmp_path, nproc=2)
    assert result.returncode == 0, _tails(result)
    losses = _losses(tmp_path / strategy)
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in single.items():
        assert abs(losses[step] - loss) < 2e-4, f"{strategy} step {step}: {losses[step]} vs {loss}"
    assert result.stdout.count("run folder:") == 1  # only rank 0 speaks
    final = tmp_path / strategy / "checkpoints" / f"step_{STEPS:08d}"
    if strategy == "fsdp":  # DCP shards: one file per rank plus metadata and Koi's own state
        assert sorted(p.name for p in final.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp", "koi_state.pt"]
    else:
        assert final.with_suffix(".pt").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_through_c10d_rendezvous_match_one_process(prepared, tmp_path, single):
    """Multi-node launch as the README gives it: two torchrun "nodes" meet at a c10d rendezvous endpoint.

    Both run on this machine (one process each, gloo), so the launch path a cluster takes
    (no --standalone, rendezvous over TCP, ranks assigned by the rendezvous) is what is tested.
    """
    config = _config(prepared, tmp_path, "nodes", "ddp", 4)
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d",
              f"--rdzv_endpoint=127.0.0.1:{port}", "--rdzv_id=koi-test", "--rdzv_conf=join_timeout=120", "--max_restarts=0",
              "-m", "koi_train", "run", str(config)]
    nodes = [subprocess.Popen(launch, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    losses = _losses(tmp_path / "nodes")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in single.items():
        assert abs(losses[step] - loss) < 2e-4, f"step {step}: {losses[step]} vs {loss}"
    assert sum(out.count("run folder:") for out, _ in outputs) == 1  # only global rank 0 speaks, not each node's first
    assert (tmp_path / "nodes" / "checkpoints" / f"step_{STEPS:08d}.pt").exists()


@NEEDS_CPU_FSDP
def test_fsdp_checkpoint_resumes_on_one_process(prepared, tmp_path, single):
    first = _run(["run", str(_config(prepared, tmp_path, "resume", "fsdp", 4, steps=STEPS))], cwd=tmp_path, nproc=2)
    assert first.returncode == 0, _tails(first)
    run_dir = tmp_path / "resume"
    import shutil

    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")  # pretend the job died after the step-6 checkpoint
    second = _run(["resume", str(run_dir), "--set", "distributed.strategy=none", "--set", "train.batch_size=8"], cwd=tmp_path)
    assert second.returncode == 0, _tails(second)
    losses = _losses(run_dir)
    for step in range(7, STEPS + 1):
        assert abs(losses[step] - single[step]) < 2e-4, f"step {step}: {losses[step]} vs {single[step]}"


@pytest.mark.skipif(fsdp_runs_off_cuda(), reason="this torch runs FSDP2 on CPU")
def test_fsdp_on_cpu_with_an_older_torch_is_a_config_error(prepared, tmp_path):
    """torch 2.6 (the floor) has FSDP2 on CUDA only: a CPU run says so instead of crashing in a stream call."""
    result = _run(["run", str(_config(prepared, tmp_path, "old", "fsdp", 4, steps=2))], cwd=tmp_path, nproc=2)
    assert result.returncode != 0
    assert "distributed.strategy: 'fsdp' on cpu needs torch >= 2.7" in result.stderr


def test_strategy_without_torchrun_is_a_config_error(prepared, tmp_path):
    result = _run(["run", str(_config(prepared, tmp_path, "bad", "ddp", 4))], cwd=tmp_path)
    assert result.returncode == 2
    assert "distributed.strategy: 'ddp' needs a launch through torchrun" in result.stderr


@NEEDS_CPU_FSDP
def test_sharded_checkpoint_exports(prepared, tmp_path):
    first = _run(["run", str(_config(prepared, tmp_path, "exp", "fsdp", 4, steps=3))], cwd=tmp_path, nproc=2)
    assert first.returncode == 0, _tails(first)
    result = _run(["export", str(tmp_path / "exp"), str(tmp_path / "hf")], cwd=tmp_path)
    assert result.returncode == 0, _tails(result)
    assert (tmp_path / "hf" / "model.safetensors").exists()


@NEEDS_CPU_FSDP
def test_fsdp_keeps_the_precision_plan(prepared, tmp_path):
    path = _config(prepared, tmp_path, "quant", "fsdp", 4, steps=8)
    raw = json.loads(path.read_text())
    raw["precision"] = {"plan": {"transformer.h.*.mlp.*": "ternary", "transformer.h.*.attn.*": "int8"}}
    path.write_text(json.dumps(raw))
    result = _run(["run", str(path)], cwd=tmp_path, nproc=2)
    assert result.returncode == 0, _tails(result)
    assert "ternary" in result.stdout and "int8" in result.stdout  # the plan is printed at start
    losses = _losses(tmp_path / "quant")
    assert losses[8] < losses[1]


def test_one_failing_rank_stops_the_job_with_a_clear_error(prepared, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    # Each torchrun worker imports this at start-up; rank 1 fails at step 3 as a real bug would.
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('LOCAL_RANK') == '1':\n"
        "    from koi_train import trainer\n"
        "    original = trainer.Trainer.train_step\n"
        "    def failing(self):\n"
        "        if self.step == 3:\n"
        "            raise RuntimeError('injected failure')\n"
        "        return original(self)\n"
        "    trainer.Trainer.train_step = failing\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hook) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = _run(["run", str(_config(prepared, tmp_path, "fail", "ddp", 4))], cwd=tmp_path, nproc=2)
    assert result.returncode != 0
    assert "koi-train: rank 1 of 2 failed: RuntimeError: injected failure" in result.stderr
