"""Text-to-image diffusion for notebook 06 (DRaFT / DRaFT+). Imports flow down this list, never up.

- :mod:`~alignkit.diffusion.system`: :class:`DiffusionSystem`, the one interface the trainer sees (a UNet, a
  DDIM scheduler, a prompt encoder and a decoder to images in [0, 1]), pixel space or latent space alike.
- :mod:`~alignkit.diffusion.shapes`: the ``cpu``/``smoke`` world: procedurally drawn captioned shapes, the
  analytic gold scorer and caption check, the caption splits. No models.
- :mod:`~alignkit.diffusion.aig`, :mod:`~alignkit.diffusion.lora`: AIG schedules; LoRA adapters attached to a
  shared UNet for a block.
- :mod:`~alignkit.diffusion.sampling`: the one DDIM sampler with classifier-free guidance (gradients through the
  last K steps, AIG mixing) and ``generate``.
- :mod:`~alignkit.diffusion.shapes_model`, :mod:`~alignkit.diffusion.pretrain`: the tiny pixel-space
  text-to-image model and the learned reward of the shapes world; their pre-training, cached in ``$ALIGNKIT_HOME``.
- :mod:`~alignkit.diffusion.sd`: the ``gpu`` profile: Stable Diffusion 1.5 with a CLIP-style (PickScore) reward,
  and a tiny random SD-style pipeline built from configs so the latent path runs in CI.
- :mod:`~alignkit.diffusion.draft`: DRaFT-K, DRaFT-LV and DRaFT+ training (LoRA via peft).
- :mod:`~alignkit.diffusion.study`, :mod:`~alignkit.diffusion.across_seeds`, :mod:`~alignkit.diffusion.claims`,
  :mod:`~alignkit.diffusion.plots`: notebook 06's runs over training seeds, their statistics, the planned claims
  worded from numbers, and its figures.
"""
