"""The ``alignkit`` command: ``generate`` (chat with a model) and ``run`` (execute the tutorial chain)."""

from __future__ import annotations

import argparse
import sys


def _generate(args: argparse.Namespace) -> int:
    from alignkit.generation import chat_generate
    from alignkit.models import load_model

    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    model, tokenizer = load_model(args.model, seed=args.seed)
    reply = chat_generate(model, tokenizer, [args.prompt], max_new_tokens=args.max_new_tokens,
                          do_sample=args.sample, temperature=args.temperature, seed=args.seed, system=args.system)
    print(reply[0])
    return 0


def _run(args: argparse.Namespace) -> int:
    from alignkit.chain import run_chain

    only = [part.strip() for part in args.only.split(",") if part.strip()] if args.only else None
    run_chain(args.profile, only=only, out_dir=args.out, run_dir=args.run_dir, tutorials_dir=args.tutorials,
              seed=args.seed, progress_bar=not args.no_progress, allow_dirty=args.allow_dirty)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: ALIGNKIT_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="reply to one prompt through the model's chat template")
    generate.add_argument("--model", default="smollm2-135m-instruct",
                          help="local folder, built-in name (smollm2-135m-instruct, tiny-llama) or hub id")
    generate.add_argument("--prompt", required=True, help="the user message")
    generate.add_argument("--system", default=None, help="optional system message")
    generate.add_argument("--max-new-tokens", type=int, default=64)
    generate.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0)
    generate.set_defaults(func=_generate)

    run = commands.add_parser("run", help="execute the tutorial chain with papermill into reports/PROFILE")
    run.add_argument("--profile", choices=("smoke", "cpu", "gpu"), default=None,
                     help="defaults to $ALIGNKIT_PROFILE, else cpu")
    run.add_argument("--only", default=None, help="comma-separated notebooks by number or name, e.g. 00,01")
    run.add_argument("--out", default=None, help="report folder (default: reports/PROFILE)")
    run.add_argument("--run-dir", default=None, help="artifact folder (default: runs/PROFILE)")
    run.add_argument("--tutorials", default=None, help="notebook folder (default: tutorials/)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--allow-dirty", action="store_true",
                     help="run the cpu/gpu profile from a tree with uncommitted changes; reports say tree_clean: false")
    run.add_argument("--no-progress", action="store_true", help="hide papermill's per-cell progress bar")
    run.set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; the package's own errors, OSError (a path of the user's) and Ctrl-C end in one line on
    stderr and exit 1 (130 for Ctrl-C), unless ``--debug`` or ``ALIGNKIT_DEBUG=1`` asks for the traceback."""
    import os

    args = build_parser().parse_args(argv)
    from alignkit.chain import ChainError
    from alignkit.models import ModelNotFoundError

    debug = args.debug or os.environ.get("ALIGNKIT_DEBUG", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"alignkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except (ChainError, ModelNotFoundError, OSError, ValueError) as error:
        if debug:
            raise
        print(f"alignkit {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
