"""Text-to-image diffusion for notebook 06 (DRaFT / DRaFT+).

- :mod:`alignkit.diffusion.system`: :class:`DiffusionSystem`, the one interface the trainer sees (a UNet, a
  DDIM scheduler, a prompt encoder and a decoder to images in [0, 1]), pixel space or latent space alike.
- :mod:`alignkit.diffusion.shapes`: the ``cpu``/``smoke`` world: procedurally drawn captioned shapes, the
  analytic gold scorer and caption check, a tiny pixel-space text-to-image model pre-trained on the shapes
  (cached in ``$ALIGNKIT_HOME``) and the learned, differentiable reward network.
- :mod:`alignkit.diffusion.sd`: the ``gpu`` profile: Stable Diffusion 1.5 with a CLIP-style (PickScore) reward,
  and a tiny random SD-style pipeline built from configs so the latent path runs in CI.
- :mod:`alignkit.diffusion.draft`: DDIM sampling with gradients through the last K steps, DRaFT-K, DRaFT-LV,
  DRaFT+ (LoRA via peft) and annealed importance guidance (AIG) at inference.
"""
