"""The shared loop and the SFT/DPO trainers: packing, global averaging, resume after SIGKILL, 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alignkit import evaluate, models
from alignkit.trainers.dpo import (DPOConfig, collate_pairs, dpo_step, pair_logps, precompute_reference_logps,
                                   run_dpo, tokenize_pairs)
from alignkit.trainers.loop import TrainConfig, epoch_order, lr_multiplier
from alignkit.trainers.packing import pack, packed_target_logps, sequence_sums
from alignkit.trainers.sft import SFTConfig, collate_sft, run_sft, tokenize_sft

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"
RECORDS = [{"messages": [{"role": "user", "content": f"Add {a} and {b}."},
                         {"role": "assistant", "content": f"{a} + {b} = {a + b}" + "!" * (a % 3)}]}
           for a in range(4) for b in range(3)]


@pytest.fixture()
def tiny(tiny_dir):
    return models.load_model(str(tiny_dir))


def naive_response_logps(model, prompt_ids, response_ids) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t), one token at a time from the full-sequence logits (no packing, no masks)."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    total = torch.zeros((), dtype=torch.float64)
    for t, token in enumerate(response_ids):
        total += log_probs[len(prompt_ids) - 1 + t, token]
    return total


def test_packing_gives_each_example_its_unpacked_loss(tiny):
    model, tokenizer = tiny
    examples = tokenize_sft(tokenizer, RECORDS[:5], max_length=64)
    assert len({len(e.prompt_ids) + len(e.response_ids) for e in examples}) > 1  # different lengths
    batch = collate_sft(examples)
    assert batch.num_tokens == sum(len(e.prompt_ids) + len(e.response_ids) for e in examples)  # no padding
    with torch.no_grad():
        packed = sequence_sums(packed_target_logps(model, batch), batch)
    expected = torch.stack([naive_response_logps(model, e.prompt_ids, e.response_ids) for e in examples])
    torch.testing.assert_close(packed.double(), expected, rtol=1e-5, atol=1e-5)


def test_sft_mask_covers_exactly_the_response_and_end_of_turn(tiny):
    _, tokenizer = tiny
    (example,) = tokenize_sft(tokenizer, RECORDS[:1], max_length=64)
    prompt_text = tokenizer.decode(example.prompt_ids)
    assert prompt_text.endswith("<|im_start|>assistant\n") and "Add 0 and 0." in prompt_text
    assert tokenizer.decode(example.response_ids) == "0 + 0 = 0<|im_end|>"
    batch = collate_sft([example])
    assert batch.target_ids.tolist() == example.response_ids  # only response tokens are predicted
    assert batch.predict_positions[0].item() == len(example.prompt_ids) - 1


def test_prefix_sharing_gives_each_response_its_separate_logps(tiny):
    model, tokenizer = tiny
    pairs = tokenize_pairs(tokenizer, [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No thanks"},
                                       {"prompt": "Hi", "chosen": "Hello there, friend", "rejected": "?"}], 64)
    with torch.no_grad():
        chosen, rejected = pair_logps(model, collate_pairs(precompute_reference_logps(model, pairs)).packed)
    for i, pair in enumerate(pairs):
        assert chosen[i].item() == pytest.approx(naive_response_logps(model, pair.prompt_ids, pair.chosen_ids).item(),
                                                 abs=1e-4)
        assert rejected[i].item() == pytest.approx(
            naive_response_logps(model, pair.prompt_ids, pair.rejected_ids).item(), abs=1e-4)


def test_pack_rejects_empty_parts():
    with pytest.raises(ValueError, match="item 0: prompt and every response need at least one token"):
        pack([([1, 2], [[]])])


def test_dpo_lowers_the_loss_and_raises_the_margin(tiny, tiny_dir):
    model, tokenizer = tiny
    reference, _ = models.load_model(str(tiny_dir))
    pairs = [{"prompt": f"Word {i}", "chosen": "yes " * (1 + i % 3), "rejected": "no"} for i in range(8)]
    examples = precompute_reference_logps(reference, tokenize_pairs(tokenizer, pairs, 64))
    result = run_dpo(model, examples, dpo=DPOConfig(beta=0.5), config=TrainConfig(lr=3e-3, batch_size=8, max_steps=8))
    first, last = result.history[0], result.history[-1]
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference: −log σ(0) = log 2
    assert last["loss"] < first["loss"] - 0.2 and last["rewards/margins"] > first["rewards/margins"] + 0.2
    assert last["rewards/accuracy"] == 1.0


def test_dpo_step_matches_the_loss_formula(tiny, tiny_dir):
    model, tokenizer = tiny
    examples = tokenize_pairs(tokenizer, [{"prompt": "Hi", "chosen": "Hello", "rejected": "Bye"}], 64)
    examples[0].ref_chosen_logps, examples[0].ref_rejected_logps = -30.0, -20.0
    output = dpo_step(model, collate_pairs(examples), DPOConfig(beta=0.2))
    chosen = naive_response_logps(model, examples[0].prompt_ids, examples[0].chosen_ids).item()
    rejected = naive_response_logps(model, examples[0].prompt_ids, examples[0].rejected_ids).item()
    delta = (chosen + 30.0) - (rejected + 20.0)
    assert output.loss_sum.item() == pytest.approx(-torch.nn.functional.logsigmoid(torch.tensor(0.2 * delta)).item(),
                                                   rel=1e-4)


def _train_recording_gradients(tiny_dir, **config) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Losses per step and the accumulated gradient each optimizer step applies (read by an optimizer pre-hook)."""
    model, tokenizer = models.load_model(str(tiny_dir))
    names = {id(p): n for n, p in model.named_parameters()}
    gradients: list[dict[str, torch.Tensor]] = []

    def record(optimizer, args, kwargs):
        gradients.append({names[id(p)]: p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                          if p.grad is not None})

    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(record)
    try:
        _, result = run_sft(model, tokenizer, RECORDS, sft=SFTConfig(max_length=64),
                            config=TrainConfig(lr=3e-3, max_steps=3, **config))
    finally:
        handle.remove()
    return [h["loss"] for h in result.history], gradients


def test_accumulation_matches_a_bigger_batch(tiny_dir):
    """Batch 4 × accumulation 1 and batch 1 × accumulation 4 see the same tokens: the same loss and the same
    gradient at the first step (same weights; only the summation order differs), the same losses after.

    Weights after Adam steps are not compared: Adam divides by √v, so a gradient entry near 0 that differs
    in its last bits (another CPU's kernels sum in another order) can move its weight by up to 2·lr. The
    tolerances below sit far above float32 noise (≈1e-7 relative) and far below a wrong normalisation
    (scaling each micro-batch by its own token count instead of the global one fails it).
    """
    big_losses, big_grads = _train_recording_gradients(tiny_dir, batch_size=4, grad_accum=1)
    small_losses, small_grads = _train_recording_gradients(tiny_dir, batch_size=1, grad_accum=4)
    assert len(big_grads) == len(small_grads) == 3
    assert small_losses[0] == pytest.approx(big_losses[0], rel=1e-5)
    scale = max(g.abs().max().item() for g in big_grads[0].values())
    for name, gradient in big_grads[0].items():
        torch.testing.assert_close(small_grads[0][name], gradient, rtol=1e-3, atol=1e-4 * scale,
                                   msg=lambda text, name=name: f"{name}: {text}")
    assert small_losses == pytest.approx(big_losses, rel=1e-3)


def test_schedule_and_data_order():
    assert [lr_multiplier(s, warmup_steps=2, total_steps=6, schedule="linear") for s in range(6)] == \
        pytest.approx([0.5, 1.0, 1.0, 0.75, 0.5, 0.25])
    assert lr_multiplier(4, warmup_steps=0, total_steps=8, schedule="cosine") == pytest.approx(0.5)
    assert epoch_order(10, seed=1, epoch=0) == epoch_order(10, seed=1, epoch=0)
    assert epoch_order(10, seed=1, epoch=0) != epoch_order(10, seed=1, epoch=1)
    with pytest.raises(ValueError, match="grad_accum must be > 0"):
        TrainConfig(grad_accum=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        TrainConfig(schedule="step")


def run_script(*args: str, launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    command = (launcher or [sys.executable]) + [str(SCRIPT), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def history(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"history-rank{rank}.json").read_text())


@pytest.mark.parametrize("algorithm", ["sft", "dpo"])
def test_resume_after_sigkill_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_dir, algorithm):
    init = str(tiny_dir)
    run_script(str(tmp_path / "straight"), algorithm, "2", "8", "--init", init)
    killed = run_script(str(tmp_path / "resumed"), algorithm, "2", "8", "--init", init, "--checkpoint-every", "3",
                        "--kill-at", "5", check=False)
    assert killed.returncode == -9  # SIGKILL after step 5: the newest checkpoint is step 3
    checkpoints = sorted(p.name for p in (tmp_path / "resumed" / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step-3"]
    resumed = run_script(str(tmp_path / "resumed"), algorithm, "2", "8", "--init", init, "--checkpoint-every", "3")
    assert "resumed from" in resumed.stdout + resumed.stderr and "step 3/8" in resumed.stdout + resumed.stderr
    straight = [h["loss"] for h in history(tmp_path / "straight")["history"]]
    again = [h["loss"] for h in history(tmp_path / "resumed")["history"]]
    assert len(again) == 8 and again == pytest.approx(straight, rel=1e-6)

    # Negative control: restart from the step-3 weights as a naive user would (fresh optimizer, schedule,
    # RNG and data position): the run ends elsewhere, so the test above can tell the difference.
    naive = tmp_path / "naive"
    run_script(str(naive), algorithm, "2", "5", "--init", str(tmp_path / "resumed" / "run" / "checkpoints" /
                                                              "step-6" / "model"), "--no-resume")
    assert history(naive)["history"][-1]["loss"] != pytest.approx(straight[-1], rel=1e-3)


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path, tiny_dir):
    # `accelerate launch --cpu --num_processes 2` starts ONE process in accelerate 1.15 (its CPU path wants
    # mpirun); `--multi_gpu` goes through torchrun, and on a machine without CUDA the loop's
    # Accelerator(cpu=True) then runs 2 processes over gloo (DistributedType.MULTI_CPU).
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    run_script(str(tmp_path / "two"), "sft", "2", "4", "--init", str(tiny_dir), launcher=launcher)
    run_script(str(tmp_path / "one"), "sft", "4", "4", "--init", str(tiny_dir))
    two = history(tmp_path / "two")
    assert two["world_size"] == 2
    one = history(tmp_path / "one")
    assert one["world_size"] == 1
    two_losses, one_losses = [h["loss"] for h in two["history"]], [h["loss"] for h in one["history"]]
    # Step 1 sees the same weights on both sides (only gloo's summation order differs); after Adam steps a
    # near-zero gradient entry that differs in its last bits can move its weight by up to 2·lr (see
    # test_accumulation_matches_a_bigger_batch), so later losses get a tolerance above that noise.
    assert two_losses[0] == pytest.approx(one_losses[0], rel=1e-5)
    assert two_losses == pytest.approx(one_losses, rel=1e-3)
    assert [h["grad_norm"] for h in two["history"]][0] == pytest.approx(one["history"][0]["grad_norm"], rel=1e-4)
    assert [h["units"] for h in two["history"]] == [h["units"] for h in one["history"]]


def test_kl_to_reference_is_zero_for_the_same_model_and_matches_a_loop(tiny, tiny_dir):
    model, tokenizer = tiny
    prompts, responses = ["Hi", "Tell me"], ["Hello!", "A story"]
    assert evaluate.kl_to_reference(model, model, tokenizer, prompts, responses) == pytest.approx(0.0, abs=1e-6)
    other = models.load_model(str(models.build_tiny_llama(tiny_dir.parent / "other", seed=1)))[0]
    expected = 0.0
    for prompt, response in zip(prompts, responses):
        from alignkit.chat import tokenize_turn

        ex = tokenize_turn(tokenizer, prompt, response, 10**6)
        ids = torch.tensor([ex.prompt_ids + ex.response_ids])
        with torch.no_grad():
            p = torch.log_softmax(model(ids).logits[0].double(), -1)
            q = torch.log_softmax(other(ids).logits[0].double(), -1)
        for t in range(len(ex.response_ids)):
            pos = len(ex.prompt_ids) - 1 + t
            expected += (p[pos].exp() * (p[pos] - q[pos])).sum().item() / len(prompts)
    assert evaluate.kl_to_reference(model, other, tokenizer, prompts, responses) == pytest.approx(expected, rel=1e-4)


def test_launch_cli_trains_and_saves_a_loadable_model(tmp_path, tiny_dir):
    from alignkit.trainers import launch

    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    assert launch.main(["sft", "--model", str(tiny_dir), "--data", str(data), "--output-dir", str(tmp_path / "out"),
                        "--lr", "1e-3", "--max-steps", "2", "--batch-size", "4"]) == 0
    model, _ = models.load_model(str(tmp_path / "out" / "final"))
    assert (tmp_path / "out" / "checkpoints" / "step-2").is_dir()
    with pytest.raises(ValueError, match="--data 'nowhere.jsonl' does not exist"):
        launch.main(["sft", "--model", str(tiny_dir), "--data", "nowhere.jsonl", "--output-dir", str(tmp_path),
                     "--debug"])


def test_a_corrupt_newest_checkpoint_is_named_and_the_older_one_resumes_exactly(tmp_path, tiny_dir):
    import shutil

    init = str(tiny_dir)
    run_script(str(tmp_path / "straight"), "sft", "2", "8", "--init", init)
    straight = [h["loss"] for h in history(tmp_path / "straight")["history"]]
    killed = run_script(str(tmp_path / "killed"), "sft", "2", "8", "--init", init, "--checkpoint-every", "2",
                        "--kill-at", "7", check=False)
    assert killed.returncode == -9
    root = tmp_path / "killed" / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-4", "step-6"]
    corruptions = {"truncated weights": ("model/model.safetensors", lambda b: b[:len(b) // 2]),
                   "empty optimizer state": ("optimizer.pt", lambda b: b""),
                   "broken state.json": ("state.json", lambda b: b[:-5])}
    for name, (file, corrupt) in corruptions.items():
        case = tmp_path / name.replace(" ", "-")
        shutil.copytree(tmp_path / "killed", case)
        target = case / "run" / "checkpoints" / "step-6" / file
        target.write_bytes(corrupt(target.read_bytes()))
        resumed = run_script(str(case), "sft", "2", "8", "--init", init, "--checkpoint-every", "2")
        log = resumed.stdout + resumed.stderr
        assert f"checkpoint {case / 'run' / 'checkpoints' / 'step-6'} could not be loaded" in log, name
        assert "resumed from" in log and "step-4" in log and "(step 4/8)" in log, name
        assert [h["loss"] for h in history(case)["history"]] == pytest.approx(straight, rel=1e-6), name
    # every checkpoint corrupt: an error that names them, not a silent fresh start
    case = tmp_path / "all-corrupt"
    shutil.copytree(tmp_path / "killed", case)
    for step in ("step-4", "step-6"):
        (case / "run" / "checkpoints" / step / "state.json").write_bytes(b"")
    failed = run_script(str(case), "sft", "2", "8", "--init", init, "--checkpoint-every", "2", check=False)
    assert failed.returncode != 0
    assert "could be loaded: step-6 (JSONDecodeError" in failed.stderr and "step-4 (" in failed.stderr
