"""A tiny SFT or DPO run for the resume and multi-process tests (run as a script, never imported).

usage: train_tiny.py OUT_DIR {sft,dpo} BATCH_SIZE MAX_STEPS [--kill-at N] [--checkpoint-every N] [--no-resume]
Writes OUT_DIR/history-rank{R}.json with the loss curve.
"""

import argparse
import json
import os
import signal
import sys

from accelerate import PartialState

from alignkit.models import build_tiny_llama, load_model
from alignkit.trainers.dpo import DPOConfig, precompute_reference_logps, run_dpo, tokenize_pairs
from alignkit.trainers.loop import TrainConfig
from alignkit.trainers.sft import SFTConfig, run_sft

parser = argparse.ArgumentParser()
parser.add_argument("out")
parser.add_argument("algorithm", choices=["sft", "dpo"])
parser.add_argument("batch_size", type=int)
parser.add_argument("max_steps", type=int)
parser.add_argument("--kill-at", type=int, default=0)
parser.add_argument("--checkpoint-every", type=int, default=0)
parser.add_argument("--no-resume", action="store_true")
parser.add_argument("--init", default=None, help="start from these weights instead of the seed-0 tiny model")
args = parser.parse_args()

model_dir = args.init or str(build_tiny_llama(os.path.join(args.out, "..", "tiny-init"), seed=0))
if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):  # a bare checkpoint: borrow the tokenizer
    import shutil

    tiny = build_tiny_llama(os.path.join(args.out, "..", "tiny-init"), seed=0)
    for name in os.listdir(tiny):
        if name.startswith(("tokenizer", "chat_template", "special_tokens")):
            shutil.copy(os.path.join(tiny, name), model_dir)
model, tokenizer = load_model(model_dir)
words = ["apple", "river", "stone", "cloud", "green", "quiet", "seven", "bright"]
# different lengths on purpose: token-weighted averaging must still agree across process layouts
records = [{"messages": [{"role": "user", "content": f"Say {w} {'please ' * (i % 3)}"},
                         {"role": "assistant", "content": f"{w} " * (1 + i % 4)}]}
           for i, w in enumerate(words * 4)]
config = TrainConfig(lr=3e-3, batch_size=args.batch_size, max_steps=args.max_steps, seed=0,
                     checkpoint_every=args.checkpoint_every, schedule="cosine", warmup_steps=2)


def on_step(state, record):
    if args.kill_at and state.step == args.kill_at:
        os.kill(os.getpid(), signal.SIGKILL)  # a real, unannounced kill, right after step N


output_dir = os.path.join(args.out, "run")
if args.algorithm == "sft":
    model, result = run_sft(model, tokenizer, records, sft=SFTConfig(max_length=64), config=config,
                        output_dir=output_dir, resume=not args.no_resume, on_step=on_step)
else:
    pairs = [{"prompt": r["messages"][0]["content"], "chosen": r["messages"][1]["content"],
              "rejected": r["messages"][1]["content"].upper()} for r in records]
    reference, _ = load_model(model_dir)
    examples = precompute_reference_logps(reference, tokenize_pairs(tokenizer, pairs, 64))
    result = run_dpo(model, examples, dpo=DPOConfig(beta=0.5), config=config, output_dir=output_dir,
                     resume=not args.no_resume, on_step=on_step)
rank = int(os.environ.get("RANK", "0"))
with open(os.path.join(args.out, f"history-rank{rank}.json"), "w") as f:
    json.dump({"world_size": PartialState().num_processes, "history": result.history,
               "weights": [float(p.detach().double().sum()) for p in model.parameters()]}, f)
sys.exit(0)
