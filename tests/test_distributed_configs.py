"""The launch configs shipped in ``alignkit.configs``, and DeepSpeed ZeRO on this CPU-only machine.

1. Every shipped JSON/YAML parses; the accelerate YAMLs load through accelerate's own config classes and its
   ``accelerate launch`` argument processing (nothing is launched); the ZeRO JSONs pass DeepSpeed's own schema.
2. ``config_path`` names the available configs when a name is unknown.
3. ``slurm_multinode.sh`` builds the right per-node ``accelerate launch`` line (``srun``/``scontrol`` stubbed).
4. One ZeRO-2 and one ZeRO-3 training run of a tiny Llama through ``accelerate.Accelerator`` with the shipped
   JSON, in a one-process world on DeepSpeed's CPU accelerator (gloo), compared step by step with the same
   steps done by plain ``torch.optim.AdamW`` + ``clip_grad_norm_`` in fp32.

Run this file as a script to execute the DeepSpeed worker of (4) directly:
``python tests/test_distributed_configs.py --zero-stage 3 --out result.json`` (with the env ``_zero_env`` sets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest
import yaml

from alignkit.configs import config_names, config_path

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

ZERO_JSONS = {"deepspeed_zero2.json": 2, "deepspeed_zero3.json": 3}
ACCELERATE_YAMLS = {
    "accelerate_multigpu.yaml": "MULTI_GPU",
    "accelerate_deepspeed_zero2.yaml": "DEEPSPEED",
    "accelerate_deepspeed_zero3.yaml": "DEEPSPEED",
}

# The DeepSpeed-vs-torch comparison (4).
LR = 1e-2
# Adam's first update is LR * g / (|g| + EPS): near g = 0 its slope is LR / EPS, so with the default 1e-8 a
# 1e-11 rounding difference in a near-zero gradient (one k_proj entry here has |g| ~ 3e-10) moves a weight by
# ~5e-6. EPS = 1e-6 (same on both sides) bounds that slope at 1e4, so the comparison measures DeepSpeed, not rounding.
EPS = 1e-6
CLIP = 0.5  # below the tiny model's first gradient norm (~1.07), so clipping is active on step 1
NUM_STEPS = 3
BATCH_SHAPE = (4, 16)


def _has_deepspeed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


needs_deepspeed = pytest.mark.skipif(
    not _has_deepspeed(),
    reason="DeepSpeed is not installed (optional extra: pip install --no-build-isolation 'alignkit[gpu]')",
)


# ----------------------------------------------------------------------------------------------------------------
# 1. the files parse, and accelerate / DeepSpeed accept them


def test_config_names_lists_every_shipped_file():
    expected = set(ZERO_JSONS) | set(ACCELERATE_YAMLS) | {"slurm_multinode.sh"}
    assert set(config_names()) == expected
    for name in expected:
        assert config_path(name).is_file()


@pytest.mark.parametrize("name, zero_stage", sorted(ZERO_JSONS.items()))
def test_zero_json_values(name, zero_stage):
    config = json.loads(config_path(name).read_text())
    assert config["zero_optimization"]["stage"] == zero_stage
    # accelerate fills these from the Accelerator, the dataloader and --mixed_precision.
    for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto"
    assert config["zero_optimization"]["overlap_comm"] is True
    assert config["zero_optimization"]["contiguous_gradients"] is True
    if zero_stage == 3:
        # Without it a ZeRO-3 checkpoint holds only this rank's shard (accelerator.get_state_dict raises).
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


@needs_deepspeed
@pytest.mark.parametrize("name", sorted(ZERO_JSONS))
def test_zero_json_passes_deepspeed_schema(name):
    """DeepSpeed's pydantic model of the ZeRO section forbids unknown keys, so a misspelt option fails here."""
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    section = json.loads(config_path(name).read_text())["zero_optimization"]
    # "auto" entries are filled by accelerate from the model's hidden size; any integer stands in here.
    zero_config = DeepSpeedZeroConfig(**{key: 1024 if value == "auto" else value for key, value in section.items()})
    assert zero_config.stage == ZERO_JSONS[name]


@pytest.mark.parametrize("name, distributed_type", sorted(ACCELERATE_YAMLS.items()))
def test_accelerate_yaml_loads_through_accelerate(name, distributed_type):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    from accelerate.utils import DistributedType

    assert isinstance(yaml.safe_load(config_path(name).read_text()), dict)
    config = load_config_from_file(str(config_path(name)))  # raises on unknown keys or distributed types
    assert isinstance(config, ClusterConfig)
    assert config.distributed_type == DistributedType(distributed_type)
    # -1: accelerate refuses to start until --num_processes is given (see the next test).
    assert config.num_processes == -1
    if distributed_type == "DEEPSPEED":
        assert config.deepspeed_config["deepspeed_config_file"] in ZERO_JSONS
        assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


def _validate_launch(argv: list[str]):
    """Run accelerate's own `accelerate launch` argument processing on argv (launches nothing)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    return _validate_launch_command(launch_command_parser().parse_args(argv))


def test_multigpu_yaml_through_accelerate_launch():
    config_file = str(config_path("accelerate_multigpu.yaml"))
    args, _, _ = _validate_launch(["--config_file", config_file, "--num_processes", "4", "train.py"])
    assert args.multi_gpu and not args.use_deepspeed
    assert (args.num_processes, args.mixed_precision, args.num_machines) == (4, "bf16", 1)
    with pytest.raises(ValueError, match="--num_processes"):
        _validate_launch(["--config_file", config_file, "train.py"])


@pytest.mark.parametrize("mixed_precision", ["bf16", None])
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_yaml_with_json_through_accelerate_launch(zero_stage, mixed_precision, monkeypatch):
    """The documented launch line resolves to a DeepSpeedPlugin with the shipped JSON, as the launched process sees it.

    accelerate rejects a deepspeed_config_file combined with ZeRO settings or mixed_precision in the YAML (the
    latter only when --mixed_precision is not on the command line); building the plugin from the launch
    environment runs exactly that check.
    """
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    json_file = str(config_path(f"deepspeed_zero{zero_stage}.json"))
    args, defaults, mixed_precision_from_config = _validate_launch([
        "--config_file", str(config_path(f"accelerate_deepspeed_zero{zero_stage}.yaml")),
        "--deepspeed_config_file", json_file,
        "--num_processes", "16",
        *(["--mixed_precision", mixed_precision] if mixed_precision else []),
        "-m", "alignkit.trainers.sft",
    ])  # fmt: skip
    assert args.use_deepspeed and args.deepspeed_config_file == json_file  # the flag overrides the YAML's bare name
    # As accelerate.commands.launch.launch_command does before calling the DeepSpeed launcher (accelerate 1.15).
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, launch_env = prepare_deepspeed_cmd_env(args)
    for key, value in launch_env.items():
        if key.startswith("ACCELERATE_"):
            monkeypatch.setenv(key, value)

    plugin = DeepSpeedPlugin()  # reads the ACCELERATE_* env like the launched training process
    assert plugin.zero_stage == zero_stage
    assert plugin.zero3_init_flag is (zero_stage == 3)
    # What accelerate.Accelerator does with the launch's precision: fills bf16/fp16 "enabled": "auto".
    assert launch_env["ACCELERATE_MIXED_PRECISION"] == (mixed_precision or "no")
    plugin.set_mixed_precision(launch_env["ACCELERATE_MIXED_PRECISION"])
    assert plugin.deepspeed_config["bf16"]["enabled"] is (mixed_precision == "bf16")
    assert plugin.deepspeed_config["fp16"]["enabled"] is False


# ----------------------------------------------------------------------------------------------------------------
# 2. config_path errors


def test_config_path_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown config name 'zero4.json'") as error:
        config_path("zero4.json")
    for name in config_names():
        assert name in str(error.value)


# ----------------------------------------------------------------------------------------------------------------
# 3. the Slurm script


def test_slurm_script_launches_accelerate_once_per_node(tmp_path):
    """Stub srun (runs its command once per node, setting SLURM_NODEID), scontrol and accelerate (records argv)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/bash\nprintf "gpu-a\\ngpu-b\\n"\n')
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        'while [[ "$1" == --* ]]; do shift 2; done\n'
        'for ((node = 0; node < SLURM_NNODES; node++)); do SLURM_NODEID=$node "$@" || exit 1; done\n'
    )
    (bin_dir / "accelerate").write_text(
        '#!/bin/bash\nprintf "%s\\0" "$@" > "$RECORD_DIR/node$SLURM_NODEID"\n'
    )
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {
        **os.environ,
        # `python` in the script must be this interpreter (it imports alignkit.configs).
        "PATH": f"{bin_dir}{os.pathsep}{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "RECORD_DIR": str(tmp_path),
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": "0",  # what the batch step itself sees; each task must get its own
        "GPUS_PER_NODE": "4",
        "ACCELERATE_CONFIG": "accelerate_deepspeed_zero3.yaml",
        "MIXED_PRECISION": "bf16",
    }
    train_cmd = ["-m", "alignkit.trainers.sft", "--run_dir", "runs/with space"]
    result = subprocess.run(
        ["bash", str(config_path("slurm_multinode.sh")), *train_cmd],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for node in (0, 1):
        argv = (tmp_path / f"node{node}").read_text().split("\0")[:-1]
        assert argv == [
            "launch",
            "--config_file", str(config_path("accelerate_deepspeed_zero3.yaml")),
            "--deepspeed_config_file", str(config_path("deepspeed_zero3.json")),
            "--mixed_precision", "bf16",
            "--num_machines", "2",
            "--machine_rank", str(node),
            "--num_processes", "8",
            "--main_process_ip", "gpu-a",
            "--main_process_port", "29500",
            *train_cmd,
        ]  # fmt: skip

    script = str(config_path("slurm_multinode.sh"))
    no_command = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=60)
    assert no_command.returncode == 2 and "usage" in no_command.stderr


# ----------------------------------------------------------------------------------------------------------------
# 4. DeepSpeed ZeRO on CPU, checked against plain PyTorch


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def _torch_reference_steps(model, input_ids):
    """NUM_STEPS of plain fp32 PyTorch on `model`: loss, backward, clip_grad_norm_(CLIP), AdamW(lr=LR, eps=EPS) step.

    Returns per-step losses, pre-clipping gradient norms and parameters after each step.
    """
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS)
    losses, grad_norms, params = [], [], []
    for _ in range(NUM_STEPS):
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        grad_norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP).item())
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        params.append({name: p.detach().clone() for name, p in model.named_parameters()})
    return losses, grad_norms, params


def _run_zero_worker(zero_stage: int, out_path: str) -> None:
    """Train the tiny Llama NUM_STEPS with DeepSpeed ZeRO through accelerate and with plain torch; write a report."""
    import copy

    import deepspeed.ops
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    # DeepSpeed JIT-compiles its shared-memory all-reduce (csrc/cpu/comm/shm.cpp) whenever a compiler is found:
    # ~1-2 min on 2 cores the first time, cached in ~/.cache/torch_extensions. A one-process world sends no
    # traffic through it, so mark it unavailable; collectives then go through gloo (DeepSpeed's own fallback).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

    torch.manual_seed(0)
    model = _tiny_llama()
    input_ids = torch.randint(0, model.config.vocab_size, BATCH_SHAPE, generator=torch.Generator().manual_seed(1))
    initial = {name: p.detach().clone() for name, p in model.named_parameters()}
    # fp32 reference on an exact copy: the DeepSpeed engine also runs fp32 (mixed precision "no"), so the two
    # differ only by summation order (flattened buffers, global norm), i.e. rounding.
    ref_losses, ref_grad_norms, ref_params = _torch_reference_steps(copy.deepcopy(model), input_ids)

    plugin = DeepSpeedPlugin(hf_ds_config=str(config_path(f"deepspeed_zero{zero_stage}.json")), gradient_clipping=CLIP)
    accelerator = Accelerator(deepspeed_plugin=plugin)  # no cpu=True: accelerate then skips DeepSpeed entirely
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, eps=EPS)
    # accelerate fills "train_micro_batch_size_per_gpu": "auto" from the dataloader's batch size.
    loader = torch.utils.data.DataLoader(input_ids, batch_size=BATCH_SHAPE[0])
    engine, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    # ZeRO-3 replaces a partitioned parameter's data by an empty tensor (the shard lives in p.ds_tensor) until a
    # forward gathers it; count before any forward.
    num_partitioned_params = sum(p.numel() == 0 for p in engine.module.parameters())

    losses, grad_norms, params = [], [], []
    for _ in range(NUM_STEPS):
        loss = engine(input_ids=input_ids, labels=input_ids).loss
        accelerator.backward(loss)  # under DeepSpeed: backward, clip, optimizer step, zero grad
        optimizer.step()  # no-ops under DeepSpeed; kept as in any accelerate loop
        optimizer.zero_grad()
        losses.append(loss.item())
        grad_norms.append(float(engine.get_global_grad_norm()))
        # ZeRO-3: gathers the partitioned weights (needs stage3_gather_16bit_weights_on_model_save).
        params.append({name: t.detach().clone() for name, t in accelerator.get_state_dict(engine).items()})
    with torch.no_grad():
        final_loss = engine(input_ids=input_ids, labels=input_ids).loss.item()

    def max_abs_diff(a: dict, b: dict) -> float:
        return max((a[name].float() - b[name].float()).abs().max().item() for name in b)

    report = {
        "distributed_type": str(accelerator.distributed_type).split(".")[-1],
        "num_processes": accelerator.num_processes,
        "engine_zero_stage": engine.zero_optimization_stage(),
        "zero_optimizer": type(engine.optimizer).__name__,
        "communication_backend": torch.distributed.get_backend(),
        "num_partitioned_params": num_partitioned_params,
        "num_params": sum(1 for _ in engine.module.parameters()),
        "losses": losses,
        "reference_losses": ref_losses,
        "grad_norms": grad_norms,
        "reference_grad_norms": ref_grad_norms,
        "max_abs_diff_per_step": [max_abs_diff(params[k], ref_params[k]) for k in range(NUM_STEPS)],
        "max_abs_change_step1": max_abs_diff(params[0], initial),
        "final_loss": final_loss,
        "dtypes": sorted({str(t.dtype) for t in params[-1].values()}),
    }
    pathlib.Path(out_path).write_text(json.dumps(report, indent=2))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _zero_env() -> dict[str, str]:
    """A one-process torch.distributed world on this machine, with DeepSpeed's CPU accelerator."""
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }


@needs_deepspeed
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_deepspeed_zero_on_cpu_matches_torch_adamw(zero_stage, tmp_path):
    import torch.distributed

    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no gloo backend: DeepSpeed's CPU accelerator needs it (or oneCCL)")

    out = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, __file__, "--zero-stage", str(zero_stage), "--out", str(out)],
        env=_zero_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, f"DeepSpeed worker failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    report = json.loads(out.read_text())
    print(json.dumps(report, indent=2))  # shown with pytest -s: the numbers this check saw

    # ZeRO really ran, at the requested stage, through accelerate.
    assert report["distributed_type"] == "DEEPSPEED"
    assert report["engine_zero_stage"] == zero_stage
    assert report["zero_optimizer"] == {2: "DeepSpeedZeroOptimizer", 3: "DeepSpeedZeroOptimizer_Stage3"}[zero_stage]
    assert report["communication_backend"] == "gloo"
    if zero_stage == 3:
        assert report["num_partitioned_params"] > 0
    assert report["dtypes"] == ["torch.float32"]

    # Same computation as plain torch. Tolerances: fp32 on both sides, differing only in summation order;
    # observed weight differences are <= 2.5e-7 (ZeRO-2) and <= 4.8e-7 (ZeRO-3); run with -s to see the report.
    assert report["reference_grad_norms"][0] > CLIP, "clipping must be active for the comparison to cover it"
    assert report["grad_norms"] == pytest.approx(report["reference_grad_norms"], rel=1e-5)
    assert report["losses"] == pytest.approx(report["reference_losses"], rel=1e-5)
    assert report["max_abs_diff_per_step"][0] < 1e-5  # the first optimizer step
    assert max(report["max_abs_diff_per_step"]) < 1e-5  # and after NUM_STEPS, where clipping's scale matters

    # Smoke checks: the step did something, and training on the fixed batch lowers its loss.
    assert report["max_abs_change_step1"] > 1e-3
    assert report["final_loss"] < report["losses"][0]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero-stage", type=int, choices=(2, 3), required=True)
    parser.add_argument("--out", required=True)
    cli_args = parser.parse_args()
    _run_zero_worker(cli_args.zero_stage, cli_args.out)
