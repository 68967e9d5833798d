"""The shapes world of notebook 06: drawing, the analytic gold scorer and caption check, the tiny
text-to-image model (smoke profile) and the learned reward."""

from __future__ import annotations

import json

import pytest
import torch

from alignkit.diffusion import pretrain
from alignkit.diffusion import shapes as S
from alignkit.diffusion.sampling import generate
from alignkit.diffusion.system import DiffusionSystem


def _square(size, cx, cy, shade, color="red", bg="black"):
    return S.ShapeAttributes(color=[color], shape=["square"], background=[bg], size=torch.tensor([size]),
                             cx=torch.tensor([cx]), cy=torch.tensor([cy]), shade=torch.tensor([shade]))


def test_drawing_is_deterministic_per_seed():
    a, caps_a, attrs_a = S.draw_dataset(32, seed=3)
    b, caps_b, _ = S.draw_dataset(32, seed=3)
    c, _, _ = S.draw_dataset(32, seed=4)
    assert a.shape == (32, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and caps_a == caps_b
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    assert caps_a == attrs_a.captions()
    assert all(S.parse_caption(c) for c in caps_a)


def test_gold_on_hand_made_images():
    big = S.draw_shapes(_square(0.65, 0.5, 0.5, 1.0))
    small_dim_corner = S.draw_shapes(_square(0.3, 0.2, 0.2, 0.4))
    scores = S.gold_score(torch.cat([big, small_dim_corner]))
    assert scores[0] > 0.8 and scores[1] < 0.2 and scores[0] > scores[1]

    blank = torch.zeros(2, 3, 16, 16)
    uniform = torch.full((2, 3, 16, 16), 0.4)
    assert S.gold_score(blank).abs().max() < 1e-6
    m = S.analyze_images(uniform)
    assert not m["has_shape"].any()
    assert S.gold_score(uniform).abs().max() < 1e-6

    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 16, 16, generator=gen)
    blobs = torch.nn.functional.avg_pool2d(torch.rand(8, 3, 20, 20, generator=gen), 5, stride=1)
    weird = torch.randn(4, 3, 16, 16, generator=gen) * 3  # out of range: clamped, no crash
    for images in (noise, blobs, weird):
        g = S.gold_score(images)
        assert g.shape == (images.shape[0],) and torch.isfinite(g).all() and (g >= 0).all() and (g <= 1).all()
    assert S.gold_score(noise).mean() < 0.2  # noise is not "one plain shape"


def test_gold_agrees_with_preference_on_drawn_images():
    images, _, attrs = S.draw_dataset(300, seed=1)
    pref = S.preference_from_attributes(attrs)
    gold = S.gold_score(images)
    assert (pref >= 0).all() and (pref <= 1).all()
    assert S.pearson(gold, pref) >= 0.9
    assert (gold - pref).abs().mean() < 0.05


def test_caption_match_drawn_vs_shuffled():
    images, captions, _ = S.draw_dataset(300, seed=2)
    assert S.caption_match(images, captions).float().mean() >= 0.95
    shuffled = captions[1:] + captions[:1]
    assert S.caption_match(images, shuffled).float().mean() <= 0.2
    with pytest.raises(ValueError, match="captions"):
        S.caption_match(images, captions[:3])


def test_judges_are_robust_to_blur_and_noise():
    """Generated images are never crisp: the judges must still read slightly blurred, noisy drawings."""
    images, captions, attrs = S.draw_dataset(300, seed=3)
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None, :] / 16).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(images, (1, 1, 1, 1), mode="replicate"), k, groups=3)
    noisy = (blurred + 0.05 * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert S.caption_match(noisy, captions).float().mean() >= 0.9
    assert S.pearson(S.gold_score(noisy), S.preference_from_attributes(attrs)) >= 0.85


def test_parse_caption_and_prompt_split():
    assert S.parse_caption("a red circle on a navy background") == ("red", "circle", "navy")
    with pytest.raises(ValueError, match="a <colour> <shape> on a <background> background"):
        S.parse_caption("a red circle")
    with pytest.raises(ValueError, match="purple"):
        S.parse_caption("a purple circle on a black background")
    with pytest.raises(ValueError, match="not part of this world"):
        S.parse_caption("a blue square on a navy background")
    captions = S.all_captions()
    assert len(captions) == len(set(captions)) == 6 * 3 * 4 - 3
    train, heldout = S.prompt_split(0)
    assert set(train).isdisjoint(heldout) and sorted(train + heldout) == sorted(captions)
    assert S.prompt_split(0) == (train, heldout) and S.prompt_split(1) != (train, heldout)


def test_smoke_system_loads_samples_and_hits_the_cache(monkeypatch):
    system = pretrain.load_shapes_system("smoke", seed=0)
    assert isinstance(system, DiffusionSystem) and system.sample_shape == (3, 16, 16)
    ctx = system.encode(["a red circle on a navy background", ""])
    assert ctx.shape[:2] == (2, 7) and ctx.shape[2] == system.unet.config.cross_attention_dim
    assert not ctx.requires_grad
    with pytest.raises(ValueError, match="form"):
        system.encode(["a red blob"])
    images = generate(system, ["a red circle on a navy background"] * 2, seeds=[0, 1], num_steps=2)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    x0 = torch.randn(2, 3, 16, 16, requires_grad=True) * 2
    system.decode(x0).sum().backward()  # decode is differentiable

    record = json.loads((pretrain.shapes_system_dir("smoke", seed=0) / "pretrain.json").read_text())
    for key in ("config", "train_seconds", "final_loss", "caption_match_test", "samples", "data", "weights_hash"):
        assert key in record

    def no_training(*args, **kwargs):
        raise AssertionError("the cached system was retrained")

    monkeypatch.setattr(pretrain, "_train_system", no_training)
    again = pretrain.load_shapes_system("smoke", seed=0)
    for p, q in zip(system.unet.parameters(), again.unet.parameters()):
        assert torch.equal(p, q)


def test_reward_gradient_reaches_the_images():
    reward = pretrain.load_shapes_reward("smoke", seed=0)
    assert not reward.training and not any(p.requires_grad for p in reward.parameters())
    images = torch.rand(3, 3, 16, 16, requires_grad=True)
    scores = reward(images, ["a red circle on a navy background"] * 3)
    assert scores.shape == (3,)
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    record = json.loads((pretrain.shapes_reward_dir("smoke", seed=0) / "reward.json").read_text())
    assert "heldout_pearson_gold" in record
    assert reward(torch.rand(2, 3, 32, 32)).shape == (2,)  # other sizes are resized


def test_interrupted_build_leaves_no_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_HOME", str(tmp_path))

    def broken_evaluation(*args, **kwargs):  # after the weights were written
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(pretrain, "_evaluate_system", broken_evaluation)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain.load_shapes_system("smoke", seed=0)
    monkeypatch.setattr(pretrain, "_train_reward", broken_evaluation)
    with pytest.raises(RuntimeError, match="killed"):
        pretrain.load_shapes_reward("smoke", seed=0)
    assert list((tmp_path / "diffusion").iterdir()) == []


def test_unknown_profile_is_a_clear_error():
    with pytest.raises(ValueError, match="smoke"):
        pretrain.load_shapes_system("laptop")


def test_three_way_split_keeps_the_test_captions():
    train, validation, test = S.prompt_splits(0)
    assert test == S.prompt_split(0)[1]  # the test captions of every earlier report
    assert set(train).isdisjoint(validation) and set(train).isdisjoint(test) and set(validation).isdisjoint(test)
    assert sorted(train + validation) == sorted(S.prompt_split(0)[0])
    assert len(validation) == round(0.25 * (len(train) + len(validation)))
    assert S.prompt_splits(0) == (train, validation, test) and S.prompt_splits(1)[1] != validation
    with pytest.raises(ValueError, match="validation_fraction"):
        S.prompt_splits(0, validation_fraction=1.0)


def test_weights_hash_names_the_weights():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert pretrain.weights_hash(a) == pretrain.weights_hash(b) and len(pretrain.weights_hash(a)) == 16
    with torch.no_grad():
        b.weight[0, 0] += 1e-6
    assert pretrain.weights_hash(a) != pretrain.weights_hash(b)
    system = pretrain.load_shapes_system("smoke", seed=0)
    record = json.loads((pretrain.shapes_system_dir("smoke", seed=0) / "pretrain.json").read_text())
    assert pretrain.system_hash(system) == record["weights_hash"]  # the saved and reloaded weights are the same


def test_imports_flow_one_way_and_settings_live_in_one_table():
    """shapes.py is the world without models: importing it must not import the model modules, and it
    re-exports nothing of them. The pre-training settings are the profiles table's 06 entry, not a copy."""
    import subprocess
    import sys

    code = ("import sys, alignkit.diffusion.shapes as S; "
            "print(any(m in sys.modules for m in ('alignkit.diffusion.pretrain', 'alignkit.diffusion.shapes_model', "
            "'diffusers')), hasattr(S, '__getattr__'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    from alignkit.profiles import NOTEBOOK_DEFAULTS

    assert pretrain.profile_settings("cpu")["pretrain"] is NOTEBOOK_DEFAULTS["06_draftplus"]["cpu"]["pretrain"]
    assert not hasattr(pretrain, "PROFILES")
