"""What notebook 06 runs: the world, the methods over several training seeds, the λ choice on validation, AIG.

:func:`load_world` gives, for ``smoke``/``cpu``, the pre-trained 16×16 shapes model, the learned reward network and
the analytic gold scorer of :mod:`alignkit.diffusion.shapes`, with the captions split three ways (train /
validation / test); for ``gpu``, Stable Diffusion 1.5 with PickScore and prompts from a hub dataset (no analytic
gold exists there: ``gold`` is None). :func:`evaluate_method` samples a caption list × the x_T seeds and keeps the
per-image and per-caption values that the intervals are computed from. :func:`run_study` trains every method once
per training seed and evaluates it; :func:`alignkit.diffusion.claims.summarise` turns the result into metrics.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from alignkit import evaluate
from alignkit.diffusion.draft import DraftConfig, DraftResult, train_draft
from alignkit.diffusion.lora import LoraWeights
from alignkit.diffusion.sampling import generate
from alignkit.diffusion.system import DiffusionSystem

PER_IMAGE = ("reward", "gold", "caption_match")
"""measures with one value per image (paired across methods by caption and x_T seed)"""
PER_PROMPT = ("diversity", "pixel_l2")
"""measures with one value per caption (over its x_T seeds), paired across methods by caption"""


@dataclass
class World:
    system: DiffusionSystem
    reward: torch.nn.Module
    """the training reward: differentiable, images in [0, 1] (B, 3, H, W) and prompts → (B,)"""
    train_prompts: list[str]
    validation_prompts: list[str]
    """for choosing settings (DRaFT+'s λ); never trained on, never reported as a result"""
    test_prompts: list[str]
    gold: Callable[[Tensor], Tensor] | None = None
    """the analytic gold scorer (never used in training); None where there is none (gpu)"""
    caption_match: Callable[[Tensor, list[str]], Tensor] | None = None
    """does an image show its caption (analytic); None where there is none"""
    info: dict = field(default_factory=dict)
    """what the world was built from: pre-training and reward-network records, the pre-trained model's hash"""


def load_world(profile: str, *, seed: int = 0, num_eval_prompts: int | None = None,
               num_validation_prompts: int | None = None, device: str | None = None) -> World:
    """The model, reward, scorers and prompts of notebook 06 in ``profile`` (built and cached on first use).

    ``num_eval_prompts`` / ``num_validation_prompts`` keep the first n test / validation captions (None: all).
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    n_test, n_val = num_eval_prompts, num_validation_prompts
    if profile == "gpu":
        from alignkit.diffusion import sd

        system = sd.load_sd_system(device=device)
        reward = sd.load_pickscore_reward(device=device)
        n_test, n_val = n_test or 16, n_val or 16
        prompts = sd.gpu_prompts(400 + n_test + n_val, seed=seed)
        return World(system=system, reward=reward, train_prompts=prompts[n_test + n_val:],
                     validation_prompts=prompts[n_test:n_test + n_val], test_prompts=prompts[:n_test],
                     info={"system": system.name, "reward": "PickScore v1"})
    from alignkit.diffusion import pretrain, shapes

    system = pretrain.load_shapes_system(profile, seed=seed, device=device)
    reward = pretrain.load_shapes_reward(profile, seed=seed, device=device)
    train_prompts, validation_prompts, test_prompts = shapes.prompt_splits(seed)
    info = {"pretrain": pretrain.pretrain_record(profile, seed=seed),
            "reward": pretrain.reward_record(profile, seed=seed),
            "pretrained_hash": pretrain.system_hash(system), "reward_hash": pretrain.weights_hash(reward)}
    return World(system=system, reward=reward, train_prompts=train_prompts,
                 validation_prompts=validation_prompts[:n_val], test_prompts=test_prompts[:n_test],
                 gold=shapes.gold_score, caption_match=shapes.caption_match, info=info)


@dataclass
class Evaluation:
    """One model sampled on a caption list × the x_T seeds: per-image values (P, S), per-caption values (P,)."""

    values: dict[str, np.ndarray]
    """``reward``, ``gold``, ``caption_match`` (P, S) and ``diversity`` (Vendi), ``pixel_l2`` (P,); a measure the
    world lacks (gold on gpu) is absent"""
    images: Tensor
    """(P, S, 3, H, W) in [0, 1]"""

    def units(self, measure: str) -> np.ndarray:
        """The values a bootstrap resamples: per image (flattened P·S) or per caption (P)."""
        return self.values[measure].reshape(-1)

    def mean(self, measure: str) -> float:
        return float(self.values[measure].mean())


@torch.no_grad()
def evaluate_method(world: World, prompts: Sequence[str], *, seeds: Sequence[int], num_steps: int,
                    lora: LoraWeights | None = None, aig_schedule: str | None = None,
                    batch_size: int = 64) -> Evaluation:
    """Sample every caption of ``prompts`` with every seed (the same x_T for every method) and measure the images.

    ``diversity`` is the Vendi score (:func:`alignkit.evaluate.vendi_score`, cosine kernel on pixels) of each
    caption's images; ``pixel_l2`` (:func:`alignkit.evaluate.diversity`) is kept only as a diagnostic.
    """
    prompts = list(prompts)
    flat_prompts = [p for p in prompts for _ in seeds]
    flat = generate(world.system, flat_prompts, seeds=[s for _ in prompts for s in seeds], num_steps=num_steps,
                    lora=lora, aig_schedule=aig_schedule, batch_size=batch_size)
    shape = (len(prompts), len(seeds))
    images = flat.reshape(*shape, *flat.shape[1:])
    device = next(world.reward.parameters()).device
    rewards = torch.cat([world.reward(flat[i:i + batch_size].to(device), flat_prompts[i:i + batch_size]).float().cpu()
                         for i in range(0, len(flat), batch_size)])
    values = {"reward": rewards.double().numpy().reshape(shape)}
    if world.gold is not None:
        values["gold"] = world.gold(flat).double().numpy().reshape(shape)
    if world.caption_match is not None:
        values["caption_match"] = world.caption_match(flat, flat_prompts).double().numpy().reshape(shape)
    values["diversity"] = np.array([evaluate.vendi_score(images[i:i + 1]) for i in range(len(prompts))])
    values["pixel_l2"] = np.array([evaluate.diversity(images[i:i + 1]) for i in range(len(prompts))])
    return Evaluation(values=values, images=images)


def method_configs(settings: dict, *, seed: int, draft_k: int, draftplus_k: int,
                   lambdas: Sequence[float]) -> dict[str, DraftConfig]:
    """The DRaFT configs of one training seed: ``draft_k1``, ``draft_k<draft_k>``, ``draft_lv`` and one DRaFT+
    per λ (named by :func:`lambda_name`). ``settings`` holds ``num_updates``, ``batch_size``, ``lr``,
    ``lora_rank`` (LoRA α = rank) and ``num_steps``."""
    if draft_k < 2:
        raise ValueError(f"draft_k={draft_k}: the DRaFT-K entry needs K of 2 or more (K = 1 is draft_k1)")
    common = dict(num_updates=settings["num_updates"], batch_size=settings["batch_size"], lr=settings["lr"],
                  lora_rank=settings["lora_rank"], lora_alpha=float(settings["lora_rank"]),
                  num_steps=settings["num_steps"], seed=seed)
    configs = {"draft_k1": DraftConfig(method="draft", k=1, lam=0.0, **common),
               f"draft_k{draft_k}": DraftConfig(method="draft", k=draft_k, lam=0.0, **common),
               "draft_lv": DraftConfig(method="draft_lv", k=1, lam=0.0, **common)}
    for lam in lambdas:
        if not lam > 0:
            raise ValueError(f"lambdas must be > 0 (λ = 0 is DRaFT-K itself), got {lam}")
        configs[lambda_name(lam)] = DraftConfig(method="draftplus", k=draftplus_k, lam=float(lam), **common)
    return configs


def lambda_name(lam: float) -> str:
    return f"draftplus_lam{lam:g}"


@dataclass
class StudyResults:
    """Everything :func:`run_study` measured; lists run over the training seeds, in order."""

    training_seeds: list[int]
    eval_seeds: list[int]
    base: dict[str, Evaluation]
    """the pre-trained model on ``"validation"`` and ``"test"`` (it has no training seed)"""
    test: dict[str, list[Evaluation]]
    """method → one test evaluation per training seed (``draftplus`` is DRaFT+ at the chosen λ)"""
    validation: dict[float, list[Evaluation]]
    """λ → validation evaluations; λ = 0 is DRaFT-K with DRaFT+'s K"""
    lambda_chosen: float
    aig: dict[str, dict[str, list[Evaluation]]]
    """fine-tuned model → AIG schedule → test evaluations"""
    histories: dict[str, list[list[dict]]]
    train_seconds: dict[str, list[float]]
    loras: dict[str, list[LoraWeights]] = field(default_factory=dict, repr=False)


def choose_lambda(validation: dict[float, list[Evaluation]], *, min_vendi_ratio: float = 1.2) -> float:
    """The λ > 0 with the highest gold score on the validation captions, averaged over the training seeds.

    Without a gold scorer (gpu): the λ with the highest validation reward among those whose Vendi diversity is
    at least ``min_vendi_ratio`` × that of λ = 0, else the largest λ.
    """
    candidates = sorted(lam for lam in validation if lam > 0)
    if not candidates:
        raise ValueError("the λ sweep holds no λ > 0")

    def seed_mean(lam: float, measure: str) -> float:
        return float(np.mean([e.mean(measure) for e in validation[lam]]))

    if "gold" in validation[candidates[0]][0].values:
        return max(candidates, key=lambda lam: seed_mean(lam, "gold"))
    floor = min_vendi_ratio * seed_mean(0.0, "diversity")
    admissible = [lam for lam in candidates if seed_mean(lam, "diversity") >= floor]
    return max(admissible, key=lambda lam: seed_mean(lam, "reward")) if admissible else candidates[-1]


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``num_threads`` intra-op threads (None: leave torch's setting), then restore it.

    The shapes models are tiny: their kernels are too short for a second thread to pay for its synchronisation,
    and on a shared 2-core machine two spinning threads per process slow everyone (smoke 06 measured 20× slower
    with 2 threads than with 1 while another notebook ran)."""
    before = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_study(world: World, settings: dict, *, training_seeds: Sequence[int], eval_seeds: Sequence[int],
              draft_k: int = 2, draftplus_k: int = 1, aig_schedules: Sequence[str] = ("linear",),
              aig_models: Sequence[str] = ("draft_k1", "draftplus"), progress: bool = True) -> StudyResults:
    """Train every method of :func:`method_configs` once per training seed, evaluate, choose λ, run AIG.

    1. the base model on the validation and test captions;
    2. per training seed: DRaFT-K1, DRaFT-K (``draft_k``), DRaFT-LV on the test captions; DRaFT+ for each
       λ in ``settings["lambdas"]`` (and DRaFT-K with DRaFT+'s K as λ = 0) on the validation captions;
    3. λ is chosen on validation (:func:`choose_lambda`), the same λ for every seed; its models go to test as
       ``draftplus``;
    4. AIG: each of ``aig_models`` mixed with the initial model under each of ``aig_schedules`` on test
       (``base`` and ``draft`` are the two end points and need no sampling: they are the models themselves).

    ``settings["num_threads"]`` (if set) is torch's thread count for the whole study (:func:`torch_threads`).
    """
    with torch_threads(settings.get("num_threads")):
        return _run_study(world, settings, training_seeds=training_seeds, eval_seeds=eval_seeds, draft_k=draft_k,
                          draftplus_k=draftplus_k, aig_schedules=aig_schedules, aig_models=aig_models,
                          progress=progress)


def _run_study(world: World, settings: dict, *, training_seeds: Sequence[int], eval_seeds: Sequence[int],
               draft_k: int, draftplus_k: int, aig_schedules: Sequence[str], aig_models: Sequence[str],
               progress: bool) -> StudyResults:
    steps = settings["num_steps"]

    def measure(prompts, lora=None, schedule=None) -> Evaluation:
        return evaluate_method(world, prompts, seeds=eval_seeds, num_steps=steps, lora=lora, aig_schedule=schedule)

    base = {"validation": measure(world.validation_prompts), "test": measure(world.test_prompts)}
    lambdas = [float(lam) for lam in settings["lambdas"]]
    zero_name = "draft_k1" if draftplus_k == 1 else f"draft_k{draftplus_k}"
    if zero_name not in ("draft_k1", f"draft_k{draft_k}"):
        raise ValueError(f"draftplus_k={draftplus_k} must be 1 or draft_k={draft_k} (its λ = 0 point is trained)")
    test: dict[str, list[Evaluation]] = {}
    validation: dict[float, list[Evaluation]] = {lam: [] for lam in [0.0, *lambdas]}
    histories: dict[str, list[list[dict]]] = {}
    seconds: dict[str, list[float]] = {}
    loras: dict[str, list[LoraWeights]] = {}
    for seed in training_seeds:
        configs = method_configs(settings, seed=int(seed), draft_k=draft_k, draftplus_k=draftplus_k, lambdas=lambdas)
        for name, config in configs.items():
            result: DraftResult = train_draft(world.system, world.reward, world.train_prompts, config,
                                              progress=progress)
            histories.setdefault(name, []).append(result.history)
            seconds.setdefault(name, []).append(result.seconds)
            loras.setdefault(name, []).append(result.lora)
            if not name.startswith("draftplus"):
                test.setdefault(name, []).append(measure(world.test_prompts, result.lora))
            if name == zero_name:
                validation[0.0].append(measure(world.validation_prompts, result.lora))
            elif name.startswith("draftplus"):
                validation[config.lam].append(measure(world.validation_prompts, result.lora))
    chosen = choose_lambda(validation)
    loras["draftplus"] = loras[lambda_name(chosen)]
    test["draftplus"] = [measure(world.test_prompts, lora) for lora in loras["draftplus"]]
    aig = {model: {schedule: [measure(world.test_prompts, lora, schedule) for lora in loras[model]]
                   for schedule in aig_schedules if schedule not in ("base", "draft")}
           for model in aig_models}
    return StudyResults(training_seeds=[int(s) for s in training_seeds], eval_seeds=[int(s) for s in eval_seeds],
                        base=base, test=test, validation=validation, lambda_chosen=chosen, aig=aig,
                        histories=histories, train_seconds=seconds, loras=loras)


def describe_world(world: World, *, seed: int, num_images: int = 256) -> tuple[list[str], Tensor | None, float | None]:
    """What the world was built from, in a few lines; 2 × 8 drawn images (lowest and highest gold) for a figure;
    and the Pearson correlation of the learned reward with gold on ``num_images`` drawn images (None on gpu)."""
    if world.gold is None:
        return [f"model: {world.system.name}; reward: {world.info.get('reward')}; no analytic gold scorer: the "
                "training reward is the only measure"], None, None
    from alignkit.diffusion import shapes

    record, reward_record = world.info["pretrain"], world.info["reward"]
    drawn, captions, _ = shapes.draw_dataset(num_images, seed=seed)
    with torch.no_grad():
        drawn_reward = world.reward(drawn.to(next(world.reward.parameters()).device), captions).float().cpu()
    drawn_gold = shapes.gold_score(drawn)
    correlation = shapes.pearson(drawn_reward, drawn_gold)
    lines = [f"pre-trained model {world.info['pretrained_hash']} (cached; {record['train_seconds']:.0f} s to train, "
             f"{sum(p.numel() for p in world.system.unet.parameters()):,} UNet parameters), learned reward "
             f"{world.info['reward_hash']}",
             f"captions: {len(world.train_prompts)} train, {len(world.validation_prompts)} validation, "
             f"{len(world.test_prompts)} test",
             f"samples that show their caption, test captions: {record['caption_match_test']:.0%} (guidance "
             f"{world.system.guidance_scale:g}), {record['caption_match_test_unguided']:.0%} without guidance",
             f"learned reward vs gold on {num_images} drawn images: Pearson r = {correlation:.3f} "
             f"(held-out fit at training: {reward_record['heldout_pearson_gold']:.3f})"]
    order = drawn_gold.argsort()
    examples = drawn[torch.cat([order[:8], order[-8:]])].reshape(2, 8, *drawn.shape[1:])
    return lines, examples, correlation
