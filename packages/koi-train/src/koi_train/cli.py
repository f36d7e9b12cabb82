"""`koi-train`: run, validate, resume and export.

User errors (a bad config, shard, checkpoint or flag) print one line on stderr and exit 2;
Ctrl-C saves a checkpoint and exits 130, as shells expect after SIGINT.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from koi_tokenizer import ShardError, TokenizerFileError

from .config import ConfigError, RunConfig, config_to_dict, load_config, load_dict
from .config.load import read_config_file
from .errors import CheckpointError, ExportError
from .interrupt import DeferredInterrupt

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
USER_ERRORS = (ConfigError, ShardError, TokenizerFileError, CheckpointError, ExportError, FileNotFoundError)


def quickstart_config() -> dict:
    return json.loads(resources.files("koi_train").joinpath("configs/quickstart.json").read_text("utf-8"))


def _load(path: str | None, overrides: Sequence[str]) -> RunConfig:
    if path is None:
        return load_dict(quickstart_config(), source="quickstart.json", overrides=overrides)
    return load_config(path, overrides)


def fresh_run_dir(cfg: RunConfig) -> Path:
    """runs/NAME, or runs/NAME-2, -3... when a previous run already lives there (never overwrite)."""
    base = Path(cfg.out_dir) / cfg.name
    candidate, k = base, 1
    while candidate.exists() and any(candidate.iterdir()):
        k += 1
        candidate = base.with_name(f"{cfg.name}-{k}")
    return candidate


def _save_resolved(cfg: RunConfig, run_dir: Path) -> None:
    from koi_tokenizer import atomic_write_bytes

    atomic_write_bytes(run_dir / "config.json", json.dumps(config_to_dict(cfg), indent=2).encode())


def _train(cfg: RunConfig, run_dir: Path, resume: bool, dist) -> int:
    from .checkpoint import latest_checkpoint
    from .distributed import barrier, shutdown
    from .trainer import Trainer, TrainingAborted

    try:
        trainer = Trainer(cfg, run_dir, log=lambda msg: print(msg, flush=True), dist=dist)
        if resume and latest_checkpoint(trainer.checkpoint_dir) is not None:
            trainer.resume()
        elif resume:  # Ctrl-C came before the first checkpoint: starting over is the exact continuation
            trainer.log(f"no checkpoint in {trainer.checkpoint_dir} yet: training from step 0")
        trainer.fit()
        # Every rank done before any tears the process group down: rank 0 still writes the plot and
        # the summary after the last collective, and a gloo rank destroyed under a peer can abort.
        barrier(dist)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except TrainingAborted as exc:
        print(f"koi-train: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if dist.active and not isinstance(exc, USER_ERRORS):
            # torchrun stops the other ranks; say which one failed and why before the traceback.
            print(f"koi-train: rank {dist.rank} of {dist.world_size} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        raise
    finally:
        shutdown(dist)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .distributed import broadcast_object, init_distributed

    cfg = _load(args.config, args.set or [])
    dist = init_distributed(cfg.distributed)
    run_dir = broadcast_object(fresh_run_dir(cfg) if dist.is_main else None, dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _save_resolved(cfg, run_dir)
        print(f"run folder: {run_dir}", flush=True)
    return _train(cfg, run_dir, resume=False, dist=dist)


def cmd_resume(args: argparse.Namespace) -> int:
    from .distributed import init_distributed
    from .metrics import final_summary

    run_dir = Path(args.run_dir)
    cfg = load_dict(read_config_file(run_dir / "config.json"), source=str(run_dir / "config.json"), overrides=args.set or [])
    summary = final_summary(run_dir / "metrics.jsonl", cfg.train.steps)
    if summary is not None:  # leave a finished run as it is: no new evaluation, checkpoint or summary
        print(f"{run_dir}: complete at step {summary['step']} of {cfg.train.steps}, nothing to do "
              f"(to train longer: koi-train resume {run_dir} --set train.steps=N)")
        return 0
    return _train(cfg, run_dir, resume=True, dist=init_distributed(cfg.distributed))


def cmd_validate(args: argparse.Namespace) -> int:
    _load(args.config, args.set or [])
    print(f"{args.config}: ok")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    print(json.dumps(config_to_dict(_load(args.config, args.set or [])), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    written = export_checkpoint(args.checkpoint, args.output, args.expert)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_command import main as eval_main

    return eval_main(args.eval_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="koi-train", description="Train language models on little GPU memory.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="train from a config (default: the built-in CPU quickstart)")
    p.add_argument("config", nargs="?", help="run config JSON (omit for the quickstart)")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="override a config value (repeatable)")
    p.set_defaults(run=cmd_run)
    p = sub.add_parser("validate", help="check a config; exit 0, or one line on stderr and exit 2")
    p.add_argument("config")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE")
    p.set_defaults(run=cmd_validate)
    p = sub.add_parser("show", help="print a config with every default filled in")
    p.add_argument("config", nargs="?")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE")
    p.set_defaults(run=cmd_show)
    p = sub.add_parser("resume", help="continue a run from its latest checkpoint")
    p.add_argument("run_dir")
    p.add_argument("--set", action="append", metavar="KEY.PATH=VALUE", help="e.g. train.steps=2000 to train longer")
    p.set_defaults(run=cmd_resume)
    p = sub.add_parser("export", help="write a checkpoint as Hugging Face safetensors + config.json + tokenizer")
    p.add_argument("checkpoint", help="a step_*.pt file or a run folder (latest checkpoint)")
    p.add_argument("output", help="output folder")
    p.add_argument("--expert", type=int, metavar="N", help="mixture runs: which expert (default: the best at the last eval)")
    p.set_defaults(run=cmd_export)
    p = sub.add_parser("eval", add_help=False, help="koi-eval's perplexity, hellaswag and generate on a run or checkpoint "
                       "(--predicted-mlp: each MLP on its predicted neurons only, for runs trained with the activation predictor)")
    p.add_argument("eval_args", nargs=argparse.REMAINDER, help="e.g. perplexity -m runs/my-run val.bin (see koi-train eval --help)")
    p.set_defaults(run=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["eval"]:  # the rest is koi-eval's command line, `--help` included, which argparse would take
        return cmd_eval(argparse.Namespace(eval_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("run", "resume"):  # from here on Ctrl-C waits for a step boundary (see interrupt.py)
            with DeferredInterrupt():
                return args.run(args)
        return args.run(args)
    except USER_ERRORS as exc:
        print(f"koi-train {args.command}: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
