"""Parity with Hugging Face TRL on the same batch, in float32: DPO log-probs, DPO loss and gradient, SFT loss.

The peer is TRL's own code, called on a batch built by TRL's own tokenization and collators:
``DPOTrainer.compute_ref_log_probs`` (the per-sequence log-probs, through TRL's fused LM head, the path its
``_compute_loss`` also takes), ``DPOTrainer.compute_loss`` (sigmoid DPO with the reference forward inside)
and ``SFTTrainer.compute_loss`` (completion-only NLL). alignkit computes the same quantities on its own
packed, padding-free, prefix-shared rows (``pair_logps``, ``losses.dpo_loss``, ``sft_step``).

Both sides must see the same tokens. TRL gets *standard* prompt/completion records whose prompt is the chat
template's text up to the assistant header (``generation.format_chat``, as alignkit renders it) and whose
completion is the plain response; TRL appends the EOS token (``<|im_end|>``), so the response tokens are the
reply plus the end-of-turn token on both sides, and every test first asserts that the token ids agree.
(With *conversational* records TRL renders the completion through the template, which also appends the
``"\\n"`` after ``<|im_end|>``: one extra trained token per response that alignkit does not train, since
generation stops at ``<|im_end|>``. That is a difference of data, not of math, so it is avoided here.)

Models: the reference is the tiny random Llama (``build_tiny_llama``, seed 0); the policy is the same with
every weight perturbed by seeded Gaussian noise, so that the policy/reference log-ratios are far from zero
and no pair's loss is near its trivial value log 2. Tolerances: 1e-4 absolute on sequence log-probs (of
magnitude 20 to 200, over 4 to 29 response tokens; observed ≤ 3e-5, i.e. ~2e-7 relative) and on losses (of
order 1; observed ≤ 5e-7); gradients rtol 1e-3 + atol 1e-5 (observed ≤ 7e-7 absolute). Both sides compute in
float32, only in different orders (TRL: padded rows, vocabulary tiles with an online logsumexp; alignkit:
one packed row with a block mask, a plain logsumexp), so only rounding separates them. Breaking alignkit's
mask (plain causal over the packed row) fails every test here (log-probs off by up to 7.7, the SFT loss
by 0.02).
"""

from __future__ import annotations

import copy

import pytest
import torch

trl = pytest.importorskip("trl")
datasets = pytest.importorskip("datasets")

from alignkit import models  # noqa: E402
from alignkit.chat import format_chat  # noqa: E402
from alignkit.losses import dpo_loss  # noqa: E402
from alignkit.trainers.dpo import (DPOConfig, collate_pairs, dpo_step, pair_logps,  # noqa: E402
                                   precompute_reference_logps, tokenize_pairs)
from alignkit.trainers.sft import collate_sft, sft_step, sft_units, tokenize_sft  # noqa: E402

BETA = 0.1
MAX_LENGTH = 128  # longer than every example: nothing is cut on either side
TOLERANCE = 1e-4
PREFERENCES = [  # four pairs of different prompt and response lengths
    {"prompt": "Add 1 and 2.", "chosen": "1 + 2 = 3", "rejected": "I think it is 9, maybe."},
    {"prompt": "What is 13 + 29?", "chosen": "13 + 29 = 42", "rejected": "No."},
    {"prompt": "Say something kind.", "chosen": "You are doing great today!", "rejected": "Meh"},
    {"prompt": "Add 7 and 7, please.", "chosen": "7 + 7 = 14", "rejected": "7 + 7 = 15, I am sure of it."},
]


@pytest.fixture(scope="module")
def reference_and_policy(tmp_path_factory):
    """(reference, policy, tokenizer): the tiny Llama, and a copy with N(0, 0.2²) noise added to every weight.

    The noise is 10× the init scale (0.02), so that β|Δ| > 1 for every pair (per-pair losses 0.2 to 3.5, not
    the log 2 of a policy equal to its reference)."""
    folder = models.build_tiny_llama(tmp_path_factory.mktemp("parity") / "tiny", seed=0)
    reference, tokenizer = models.load_model(str(folder))
    policy = copy.deepcopy(reference)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in policy.parameters():  # the tied embedding / LM head is listed (and perturbed) once
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    return reference, policy, tokenizer


def trl_args(config_class, tmp_path, **overrides):
    """A TRL config for plain float32 CPU computation: no bf16, no gradient checkpointing, no logging."""
    return config_class(output_dir=str(tmp_path / "trl"), report_to="none", use_cpu=True, bf16=False,
                        gradient_checkpointing=False, per_device_train_batch_size=4, seed=0, **overrides)


def test_dpo_logps_loss_and_gradient_match_trl(reference_and_policy, tmp_path):
    """Per-sequence log π(y_c|x), log π(y_r|x) for policy and reference, the sigmoid DPO loss (β = 0.1) and its
    gradient, from alignkit (prefix-shared packed row) and TRL (``DPOTrainer`` on padded chosen/rejected rows)."""
    reference, policy, tokenizer = reference_and_policy
    examples = tokenize_pairs(tokenizer, PREFERENCES, MAX_LENGTH)

    trainer = trl.DPOTrainer(
        model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference),
        args=trl_args(trl.DPOConfig, tmp_path, beta=BETA, loss_type="sigmoid", max_length=MAX_LENGTH),
        train_dataset=datasets.Dataset.from_list(
            [{**record, "prompt": format_chat(tokenizer, record["prompt"])} for record in PREFERENCES]),
        processing_class=tokenizer,
    )
    rows = [trainer.train_dataset[i] for i in range(len(PREFERENCES))]
    for row, example in zip(rows, examples):  # the same tokens on both sides
        assert row["prompt_ids"] == example.prompt_ids
        assert (row["chosen_ids"], row["rejected_ids"]) == (example.chosen_ids, example.rejected_ids)
    trl_batch = trainer._prepare_inputs(trainer.data_collator(rows))

    with torch.no_grad():
        trl_chosen, trl_rejected = trainer.compute_ref_log_probs(trainer.model, trl_batch)
        trl_ref_chosen, trl_ref_rejected = trainer.compute_ref_log_probs(trainer.ref_model, trl_batch)
    examples = precompute_reference_logps(reference, examples, batch_size=4)
    batch = collate_pairs(examples)
    with torch.no_grad():
        chosen, rejected = pair_logps(policy, batch.packed)
    for ours, theirs in [(chosen, trl_chosen), (rejected, trl_rejected),
                         (batch.ref_chosen_logps, trl_ref_chosen), (batch.ref_rejected_logps, trl_ref_rejected)]:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=TOLERANCE)
    delta = chosen - batch.ref_chosen_logps - (rejected - batch.ref_rejected_logps)
    assert (BETA * delta).abs().min() > 1.0  # every pair far from the trivial loss log 2

    trl_loss = trainer.compute_loss(trainer.model, trl_batch)  # reference forward inside, as in training
    losses, _, _ = dpo_loss(chosen, rejected, batch.ref_chosen_logps, batch.ref_rejected_logps, beta=BETA)
    torch.testing.assert_close(losses.mean(), trl_loss.detach(), rtol=0, atol=TOLERANCE)

    trl_loss.backward()
    policy_copy = copy.deepcopy(policy)
    dpo_step(policy_copy, batch, DPOConfig(beta=BETA)).loss_sum.div(len(examples)).backward()
    for (name, ours), theirs in zip(policy_copy.named_parameters(), trainer.model.parameters()):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-3, atol=1e-5, msg=f"gradient of {name}")


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding_free"])
def test_sft_loss_matches_trl(reference_and_policy, tmp_path, padding_free):
    """Mean NLL over response tokens (reply + end-of-turn) of four examples: alignkit's packed ``sft_step``
    (loss_sum / response tokens) vs TRL's ``SFTTrainer.compute_loss`` with ``completion_only_loss``, on padded
    rows and with TRL's ``padding_free`` (one row, position ids restarting per example: transformers builds a
    block-diagonal mask from them for SDPA, so on CPU examples must not attend across each other either)."""
    _, policy, tokenizer = reference_and_policy
    records = [{"messages": [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["chosen"]}]}
               for r in PREFERENCES]
    examples = tokenize_sft(tokenizer, records, MAX_LENGTH)

    # TRL refuses padding_free without packing while max_length is set: the inputs here are short, so None.
    trainer = trl.SFTTrainer(
        model=copy.deepcopy(policy),
        args=trl_args(trl.SFTConfig, tmp_path, completion_only_loss=True, padding_free=padding_free,
                      max_length=None if padding_free else MAX_LENGTH, shuffle_dataset=False),
        train_dataset=datasets.Dataset.from_list(
            [{"prompt": format_chat(tokenizer, r["prompt"]), "completion": r["chosen"]} for r in PREFERENCES]),
        processing_class=tokenizer,
    )
    rows = [trainer.train_dataset[i] for i in range(len(records))]
    for row, example in zip(rows, examples):  # the same tokens, and the loss on exactly the response tokens
        assert row["input_ids"] == example.prompt_ids + example.response_ids
        assert [t for t in row["labels"] if t != -100] == example.response_ids
    trl_batch = trainer._prepare_inputs(trainer.data_collator(rows))
    assert ("attention_mask" in trl_batch) != padding_free

    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, trl_batch)
        batch = collate_sft(examples)
        loss = sft_step(policy, batch).loss_sum / sft_units(batch)
    torch.testing.assert_close(loss, trl_loss, rtol=0, atol=TOLERANCE)
