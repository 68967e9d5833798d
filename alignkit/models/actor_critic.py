"""PPO's trained model: the policy (a causal LM, LoRA or not) and the critic (a head model on its own trunk) as
one module, so that one optimizer, one DDP wrapper and one checkpoint hold both (TRL's PPO trainer wraps its
policy and value model the same way). The critic is usually initialised from the reward model; it may learn at
its own rate (``critic_lr_scale`` × the policy's: a LoRA policy takes a larger rate than a fully trained critic).
"""

from __future__ import annotations

import torch

from alignkit.models.fused_head import causal_lm
from alignkit.models.heads import head_at_columns


class PolicyAndCritic(torch.nn.Module):
    """``forward`` returns the policy's logits and the critic's values at the same columns."""

    def __init__(self, policy: torch.nn.Module, critic: torch.nn.Module, *, critic_lr_scale: float = 1.0) -> None:
        super().__init__()
        if not critic_lr_scale > 0:
            raise ValueError(f"critic_lr_scale must be > 0, got {critic_lr_scale}")
        self.policy = policy
        self.critic = critic
        self.critic_lr_scale = critic_lr_scale

    def optimizer_groups(self, lr: float) -> list[dict]:
        """AdamW parameter groups: the policy's trainable weights at ``lr``, the critic's at ``lr`` ×
        ``critic_lr_scale`` (the schedule scales both)."""
        groups = [{"params": [p for p in part.parameters() if p.requires_grad], "lr": lr * scale}
                  for part, scale in ((self.policy, 1.0), (self.critic, self.critic_lr_scale))]
        return [g for g in groups if g["params"]]

    def parts(self) -> dict[str, torch.nn.Module]:
        """The named parts a checkpoint saves in their own subfolders (``policy/``, ``critic/``)."""
        return {"policy": self.policy, "critic": self.critic}

    def get_output_embeddings(self) -> torch.nn.Module | None:
        """The policy's LM head (so :func:`alignkit.models.fused_head.fuse_lm_head` can fuse it)."""
        return causal_lm(self.policy).get_output_embeddings()

    def set_output_embeddings(self, head: torch.nn.Module) -> None:
        causal_lm(self.policy).set_output_embeddings(head)

    def forward(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, V) logits and (B, T) values at ``columns`` of a padded prompt + reply batch (inside
        :func:`alignkit.models.fused_head.scoring`, a fused head's (B, T, 2) log-probs and entropies instead)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        logits = self.policy(**inputs, logits_to_keep=columns, use_cache=False).logits
        return logits, head_at_columns(self.critic, inputs, columns)
