"""A tiny PPO / RLOO / GRPO run on a toy reward for the online tests (run as a script, never imported).

usage: online_tiny.py OUT_DIR {ppo,rloo,grpo} PROMPTS_PER_CHUNK CHUNKS ITERATIONS --init TINY_DIR
       [--kill-at N] [--checkpoint-every N] [--no-resume]
Writes OUT_DIR/iterations-rank{R}.json with the iteration records.
"""

import argparse
import json
import os
import signal
import sys

import torch
from accelerate import PartialState

from alignkit.chat import chat_prompt_ids
from alignkit.models import load_model
from alignkit.models.actor_critic import PolicyAndCritic
from alignkit.models.heads import load_head_model
from alignkit.trainers.engine import TrainConfig
from alignkit.trainers.online import OnlineConfig, train_online

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("algorithm", choices=["ppo", "rloo", "grpo"])
parser.add_argument("prompts_per_chunk", type=int)
parser.add_argument("chunks", type=int)
parser.add_argument("iterations", type=int)
parser.add_argument("--init", required=True)
parser.add_argument("--kill-at", type=int, default=0)
parser.add_argument("--checkpoint-every", type=int, default=0)
parser.add_argument("--no-resume", action="store_true")
args = parser.parse_args()

policy, tokenizer = load_model(args.init)
reference, _ = load_model(args.init)
model = PolicyAndCritic(policy, load_head_model(args.init, seed=1)) if args.algorithm == "ppo" else policy
prompts = chat_prompt_ids(tokenizer, [f"say {w} " * (1 + i % 3) for i, w in
                                      enumerate(["apple", "river", "stone", "cloud", "green", "quiet", "seven", "bright"])])


def upper_half(batch):
    """toy reward: the share of reply tokens in the upper half of the vocabulary"""
    hits = (batch.response_ids >= 130) & batch.response_mask
    return hits.sum(-1).float() / batch.response_mask.sum(-1).clamp(min=1)


online = OnlineConfig(algorithm=args.algorithm, iterations=args.iterations, prompts_per_chunk=args.prompts_per_chunk,
                      chunks=args.chunks, num_samples=1 if args.algorithm == "ppo" else 2, max_new_tokens=6,
                      kl_coef=0.05, update_epochs=2, num_minibatches=2, missing_eos="keep",
                      checkpoint_every=args.checkpoint_every)
config = TrainConfig(lr=3e-3, seed=0, schedule="linear")


def on_iteration(state, record):
    if args.kill_at and len(state.iterations) == args.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # a real, unannounced kill, right after iteration N


torch.set_num_threads(1)
result = train_online(model, prompts, scorer=upper_half, tokenizer=tokenizer, online=online, config=config,
                      reference=reference, output_dir=os.path.join(args.out, "run"), resume=not args.no_resume,
                      on_iteration=on_iteration)
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(args.out, f"iterations-rank{rank}.json"), "w") as f:
    json.dump({"world_size": PartialState().num_processes, "iterations": result.iterations,
               "history": result.state.history,
               "weights": [float(p.detach().double().sum()) for p in model.parameters()]}, f)
sys.exit(0)
