"""DRaFT / DRaFT-LV / DRaFT+ and AIG on tiny diffusion systems (pixel space and the tiny SD latent path)."""

from __future__ import annotations

import copy
import math
import zlib

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel

from alignkit.diffusion.aig import aig_weight
from alignkit.diffusion.draft import DraftConfig, train_draft
from alignkit.diffusion.lora import LoraWeights, lora_attached, sampling_with
from alignkit.diffusion.sampling import (ddim_sample, ddim_scheduler, ddim_step, encode_prompts, generate, guided_eps,
                                         step_alphas)
from alignkit.diffusion.system import DiffusionSystem
from alignkit.losses import draftplus_loss

EMBED_DIM, EMBED_LEN = 16, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster than two and does not thrash a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


PROMPTS = ["a red circle", "a blue square", "two green triangles"]


def make_system(seed: int = 0, guidance_scale: float = 2.0) -> DiffusionSystem:
    """A tiny pixel-space UNet2DConditionModel on 3×8×8 with a fixed random embedding per prompt."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM, attention_head_dim=4, norm_num_groups=4,
    ).eval()
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )

    def encode(prompts):
        rows = [torch.randn(EMBED_LEN, EMBED_DIM, generator=torch.Generator().manual_seed(zlib.crc32(p.encode())))
                for p in prompts]
        return torch.stack(rows)

    def decode(x):
        return ((x + 1) / 2).clamp(0, 1)

    return DiffusionSystem(unet=unet, scheduler=scheduler, encode=encode, decode=decode, sample_shape=(3, 8, 8),
                           guidance_scale=guidance_scale, name="tiny pixel")


def brightness(images, prompts):
    return images.mean(dim=(1, 2, 3))


def perturb_lora_b(params, seed=1, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in params.items():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(before, module):
    after = module.state_dict()
    assert set(after) == set(before), "module structure changed (adapter layers left behind?)"
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# --- AIG ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule, first, middle, last", [
    ("base", 0.0, 0.0, 0.0),
    ("draft", 1.0, 1.0, 1.0),
    ("linear", 0.0, 0.5, 1.0),
    ("power_2", 0.0, 0.25, 1.0),
    ("power_0.5", 0.0, math.sqrt(0.5), 1.0),
    ("step_0.5", 0.0, 1.0, 1.0),
    ("step_0.75", 0.0, 0.0, 1.0),
])
def test_aig_weights_at_ends_and_middle(schedule, first, middle, last):
    assert aig_weight(schedule, 0, 5) == pytest.approx(first)
    assert aig_weight(schedule, 2, 5) == pytest.approx(middle)  # s = 2 / 4 = 0.5
    assert aig_weight(schedule, 4, 5) == pytest.approx(last)


@pytest.mark.parametrize("bad", ["lin", "power_", "power_0", "power_-1", "step_2", "step", "Draft", ""])
def test_aig_bad_schedule_names(bad):
    with pytest.raises(ValueError, match="valid forms.*power_<p>.*step_<f>"):
        aig_weight(bad, 0, 5)


def test_aig_bad_step_index():
    with pytest.raises(ValueError, match="num_steps"):
        aig_weight("linear", 5, 5)


# --- DDIM ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("set_alpha_to_one, clip_sample", [(False, False), (True, False), (True, True)])
def test_ddim_step_matches_diffusers(set_alpha_to_one, clip_sample):
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
        set_alpha_to_one=set_alpha_to_one, clip_sample=clip_sample,
    )
    scheduler.set_timesteps(5)
    g = torch.Generator().manual_seed(0)
    clip = scheduler.config.clip_sample_range if clip_sample else None
    for t in scheduler.timesteps.tolist():  # the last one has prev < 0: ᾱ_prev = final_alpha_cumprod
        x, eps = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
        expected = scheduler.step(eps, t, x, eta=0.0)
        alpha_t, alpha_prev = step_alphas(scheduler, t)
        x_prev, x0_hat = ddim_step(x, eps, alpha_t, alpha_prev, clip_sample_range=clip)
        torch.testing.assert_close(x_prev, expected.prev_sample, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(x0_hat, expected.pred_original_sample, rtol=1e-6, atol=1e-6)
    assert step_alphas(scheduler, scheduler.timesteps[-1].item())[1] == scheduler.final_alpha_cumprod


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sampler_matches_diffusers_loop(prediction_type):
    system = make_system()
    system.scheduler = DDIMScheduler.from_config(system.scheduler.config, prediction_type=prediction_type)
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    prompts = PROMPTS[:2]
    with torch.no_grad():
        ours = ddim_sample(system, prompts, noise, num_steps=4).x0
        scheduler = DDIMScheduler.from_config(system.scheduler.config)
        scheduler.set_timesteps(4)
        cond, uncond = system.encode(prompts), system.encode([""] * 2)
        x = noise
        for t in scheduler.timesteps:
            out = system.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
            e_u, e_c = out.chunk(2)
            x = scheduler.step(e_u + system.guidance_scale * (e_c - e_u), t, x).prev_sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


# --- gradients only through the last K steps ----------------------------------------------------------


def _lora_grads(system, params, prompts, noise, k, num_steps=4):
    out = ddim_sample(system, prompts, noise, num_steps=num_steps, grad_last_k=k)
    loss = brightness(system.decode(out.x0), prompts).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return torch.cat([g.flatten() for g in grads])


def test_gradient_flows_only_through_last_k_steps():
    system = make_system()
    prompts, num_steps = PROMPTS[:2], 4
    noise = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    requires_grad = []
    hook = system.unet.register_forward_hook(lambda m, i, o: requires_grad.append(o.sample.requires_grad))
    try:
        with lora_attached(system.unet, rank=2, alpha=2, target_modules=("to_q", "to_k", "to_v", "to_out.0"),
                            trainable=True) as params:
            perturb_lora_b(params)
            requires_grad.clear()
            g1 = _lora_grads(system, params, prompts, noise, k=1)
            assert requires_grad == [False, False, False, True]  # UNet outputs of the first T−K calls: no graph
            requires_grad.clear()
            g2 = _lora_grads(system, params, prompts, noise, k=2)
            assert requires_grad == [False, False, True, True]
            g_all = _lora_grads(system, params, prompts, noise, k=num_steps)

            # by hand: the same chain detached at step T − K = 3, then one step with gradients
            scheduler = ddim_scheduler(system, num_steps)
            cond, uncond = encode_prompts(system, prompts)
            x = noise
            for i, t in enumerate(scheduler.timesteps.tolist()):
                a_t, a_prev = step_alphas(scheduler, t)
                with torch.set_grad_enabled(i == num_steps - 1):
                    x, _ = ddim_step(x, guided_eps(system, x, t, cond, uncond, a_t), a_t, a_prev)
            manual = torch.autograd.grad(brightness(system.decode(x), prompts).mean(), list(params.values()))
            manual = torch.cat([g.flatten() for g in manual])
    finally:
        hook.remove()
    assert g1.abs().sum() > 0
    torch.testing.assert_close(g1, manual, rtol=0, atol=0)  # bit-identical: earlier steps add exactly nothing
    assert not torch.allclose(g1, g2, rtol=1e-3, atol=1e-7)  # K = 2 adds the contribution of step T − 2
    assert not torch.allclose(g1, g_all, rtol=1e-3, atol=1e-7)  # earlier steps would contribute if not truncated


# --- the DRaFT+ regulariser ---------------------------------------------------------------------------


def test_regulariser_equals_formula_by_hand():
    system = make_system()
    base = copy.deepcopy(system.unet)  # an independent copy of the initial model for ε_init
    prompts, num_steps, k, lam = PROMPTS, 4, 2, 0.7
    noise = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with lora_attached(system.unet, rank=2, alpha=4, target_modules=("to_q", "to_k", "to_v", "to_out.0"),
                        trainable=True) as params:
        # at initialisation LoRA-B = 0: ε_θ = ε_init and the regulariser vanishes
        out = ddim_sample(system, prompts, noise, num_steps=num_steps, grad_last_k=k, with_init_eps=True)
        rewards = brightness(system.decode(out.x0), prompts)
        _, _, reg0 = draftplus_loss(rewards, out.eps_theta, out.eps_init, lam)
        assert reg0.item() == 0.0

        perturb_lora_b(params)
        out = ddim_sample(system, prompts, noise, num_steps=num_steps, grad_last_k=k, with_init_eps=True)
        rewards = brightness(system.decode(out.x0), prompts)
        loss, reward_term, reg = draftplus_loss(rewards, out.eps_theta, out.eps_init, lam)
        assert len(out.eps_theta) == len(out.eps_init) == len(out.x_t) == k

        scheduler = ddim_scheduler(system, num_steps)
        assert out.timesteps == scheduler.timesteps.tolist()[-k:]
        cond, uncond = system.encode(prompts), system.encode([""] * 3)
        g = system.guidance_scale
        by_hand = []
        with torch.no_grad():
            for x_t, t in zip(out.x_t, out.timesteps):
                def guided(unet):
                    e_u = unet(x_t, t, encoder_hidden_states=uncond).sample
                    e_c = unet(x_t, t, encoder_hidden_states=cond).sample
                    return e_u + g * (e_c - e_u)
                eps_theta, eps_init = guided(system.unet), guided(base)
                by_hand.append(((eps_theta - eps_init) ** 2).mean())
        by_hand = torch.stack(by_hand).mean()
    assert by_hand > 0
    torch.testing.assert_close(reg.detach(), by_hand, rtol=1e-4, atol=1e-10)
    torch.testing.assert_close(loss, -rewards.mean() + lam * reg)
    assert reward_term.item() == pytest.approx(rewards.mean().item())


def test_draftplus_loss_formula():
    rewards = torch.tensor([1.0, 3.0], requires_grad=True)
    eps_theta = [torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)]
    eps_init = [torch.zeros(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0)]
    loss, reward_term, reg = draftplus_loss(rewards, eps_theta, eps_init, lam=0.5)
    assert reward_term.item() == 2.0 and reg.item() == pytest.approx((1.0 + 4.0) / 2)
    assert loss.item() == pytest.approx(-2.0 + 0.5 * 2.5)
    assert draftplus_loss(rewards, [], [], lam=1.0)[2].item() == 0.0
    with pytest.raises(ValueError, match="lam"):
        draftplus_loss(rewards, eps_theta, eps_init, lam=-1.0)
    with pytest.raises(ValueError, match="same steps"):
        draftplus_loss(rewards, eps_theta, eps_init[:1], lam=1.0)


# --- training -----------------------------------------------------------------------------------------


def test_draft_config_validation():
    with pytest.raises(ValueError, match="DraftConfig.method"):
        DraftConfig(method="dpo")
    with pytest.raises(ValueError, match="DraftConfig.k .*num_steps"):
        DraftConfig(k=5, num_steps=4)
    with pytest.raises(ValueError, match="DraftConfig.k .*draft_lv"):
        DraftConfig(method="draft_lv", k=2)
    with pytest.raises(ValueError, match="DraftConfig.lam"):
        DraftConfig(lam=-0.1)
    with pytest.raises(ValueError, match="DraftConfig.batch_size"):
        DraftConfig(batch_size=0)
    with pytest.raises(ValueError, match="DraftConfig.lr"):
        DraftConfig(lr=0)


def test_draftplus_and_lv_on_tiny_sd_with_clip_reward():
    from alignkit.diffusion.sd import tiny_clip_reward, tiny_sd_system

    system = tiny_sd_system(seed=0)
    reward = tiny_clip_reward(seed=0)
    unet_before = snapshot(system.unet)
    requires_grad_before = {n: p.requires_grad for n, p in system.unet.named_parameters()}
    images = system.decode(torch.randn(2, *system.sample_shape))
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert system.encode(PROMPTS[:2]).shape[:2] == (2, 32)

    config = DraftConfig(method="draftplus", k=2, lam=1.0, num_updates=1, batch_size=2, num_steps=3, lr=1e-3)
    result = train_draft(system, reward, PROMPTS, config, progress=False)
    (record,) = result.history
    assert all(math.isfinite(record[key]) for key in ("reward", "reg", "loss", "grad_norm"))
    assert record["grad_norm"] > 0
    # the adapter moved (B started at 0) and the base UNet is exactly as before, adapter layers removed
    assert any(v.abs().sum() > 0 for name, v in result.lora.state.items() if ".lora_B." in name)
    assert_same_state(unet_before, system.unet)
    assert {n: p.requires_grad for n, p in system.unet.named_parameters()} == requires_grad_before
    assert not getattr(system.unet, "_hf_peft_config_loaded", False)

    lv = train_draft(system, reward, PROMPTS, DraftConfig(method="draft_lv", lv_n=2, num_updates=1, batch_size=2,
                                                          num_steps=3), progress=False)
    assert all(math.isfinite(v) for v in lv.history[0].values())
    assert_same_state(unet_before, system.unet)


def test_clip_reward_is_differentiable_and_crops():
    from alignkit.diffusion.sd import tiny_clip_reward

    reward = tiny_clip_reward(seed=0)
    images = torch.rand(2, 3, 48, 40, requires_grad=True)  # non-square, larger than the 32×32 CLIP input
    assert reward.preprocess(images).shape == (2, 3, 32, 32)
    scores = reward(images, PROMPTS[:2])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in reward.parameters())


def test_draft_k1_raises_mean_brightness():
    system = make_system(seed=0)
    config = DraftConfig(method="draft", k=1, num_updates=12, batch_size=4, num_steps=4, lr=3e-2, lora_rank=4,
                         seed=0)
    result = train_draft(system, brightness, PROMPTS, config, progress=False)
    seeds = list(range(6))
    prompts = [PROMPTS[i % 3] for i in seeds]
    before = generate(system, prompts, seeds=seeds, num_steps=4).mean()
    after = generate(system, prompts, seeds=seeds, num_steps=4, lora=result.lora).mean()
    assert after > before + 0.05, (before.item(), after.item(), [h["reward"] for h in result.history])


def test_checkpointing_gives_the_same_update():
    system = make_system(seed=0)
    config = DraftConfig(method="draftplus", k=2, lam=1.0, num_updates=1, batch_size=2, num_steps=3, lr=1e-2)
    plain = train_draft(system, brightness, PROMPTS, config, progress=False)
    config.checkpointing = True
    ckpt = train_draft(system, brightness, PROMPTS, config, progress=False)
    assert ckpt.history[0] == pytest.approx(plain.history[0], rel=1e-5)
    for name, value in plain.lora.state.items():
        torch.testing.assert_close(ckpt.lora.state[name], value)


def test_training_is_seeded_and_methods_share_one_base_system():
    system = make_system(seed=0)
    unet_before = snapshot(system.unet)
    config = DraftConfig(method="draftplus", k=2, lam=0.5, num_updates=3, batch_size=2, num_steps=3, lr=5e-3)
    first = train_draft(system, brightness, PROMPTS, config, progress=False)
    seeds, prompts = [0, 1, 2], PROMPTS
    images_first = generate(system, prompts, seeds=seeds, num_steps=3, lora=first.lora)

    other = train_draft(system, brightness, PROMPTS, DraftConfig(method="draft", num_updates=2, batch_size=2,
                                                                 num_steps=3, lr=5e-3), progress=False)
    again = train_draft(system, brightness, PROMPTS, config, progress=False)
    assert again.history == first.history  # same config → identical history, even after another method ran
    assert all(torch.equal(again.lora.state[k], v) for k, v in first.lora.state.items())
    assert other.history != first.history
    # the first adapter still samples the same images; the base UNet is untouched by all three runs
    torch.testing.assert_close(generate(system, prompts, seeds=seeds, num_steps=3, lora=first.lora), images_first,
                               rtol=0, atol=0)
    assert_same_state(unet_before, system.unet)


def test_generate_aig_endpoints_and_sampling_with():
    system = make_system(seed=0)
    with lora_attached(system.unet, rank=2, alpha=2, target_modules=("to_q", "to_k", "to_v", "to_out.0")) as p:
        perturb_lora_b(p)
        lora = LoraWeights(rank=2, alpha=2.0, target_modules=("to_q", "to_k", "to_v", "to_out.0"),
                           state={n: v.detach().clone() for n, v in p.items()})
    prompts, seeds = PROMPTS[:2], [5, 6]
    base = generate(system, prompts, seeds=seeds, num_steps=3)
    tuned = generate(system, prompts, seeds=seeds, num_steps=3, lora=lora)
    assert not torch.allclose(base, tuned)
    torch.testing.assert_close(generate(system, prompts, seeds=seeds, num_steps=3, lora=lora, aig_schedule="base"),
                               base, rtol=0, atol=0)
    torch.testing.assert_close(generate(system, prompts, seeds=seeds, num_steps=3, lora=lora, aig_schedule="draft"),
                               tuned, rtol=0, atol=0)
    mixed = generate(system, prompts, seeds=seeds, num_steps=3, lora=lora, aig_schedule="linear")
    assert not torch.allclose(mixed, base) and not torch.allclose(mixed, tuned)
    # same seed → same x_T → same image; batching does not change results
    torch.testing.assert_close(generate(system, prompts, seeds=seeds, num_steps=3, batch_size=1), base)
    with pytest.raises(ValueError, match="lora"):
        generate(system, prompts, seeds=seeds, aig_schedule="linear")
    with pytest.raises(ValueError, match="valid forms"):
        generate(system, prompts, seeds=seeds, lora=lora, aig_schedule="cosine")
    # sampling_with removes the adapter even when the block raises
    with pytest.raises(RuntimeError, match="boom"):
        with sampling_with(system, lora):
            raise RuntimeError("boom")
    assert not getattr(system.unet, "_hf_peft_config_loaded", False)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")  # from inside datasets
def test_gpu_profile_loaders_fail_clearly_offline():
    from alignkit.diffusion.sd import gpu_prompts, load_pickscore_reward, load_sd_system
    from alignkit.models import ModelNotFoundError

    missing = "alignkit-tests/no-such-repo"  # not in any cache, and the tests run offline
    with pytest.raises(ModelNotFoundError, match="gpu profile needs network"):
        load_sd_system(missing, device="cpu", dtype=torch.float32)
    with pytest.raises(ModelNotFoundError, match="PickScore"):
        load_pickscore_reward("cpu", torch.float32, model_id=missing, processor_id=missing)
    with pytest.raises(RuntimeError, match="prompt dataset"):
        gpu_prompts(4, dataset=missing)
