"""Run under torchrun: a clean DDP run, then one run per injected fault, in one process group.

Usage: torchrun --nproc_per_node 2 ddp_fault_runner.py CONFIG.json OUT.json FAULT:STEP ...
One launch serves every case, so the suite pays the process start-up once. Rank 0 writes, per
case, the final val loss, the events the guard handled and the instability records it logged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from faults import inject

from koi_train import Trainer, load_dict
from koi_train import trainer as trainer_module
from koi_train.distributed import init_distributed, shutdown


def main(config_path: str, out_path: str, *cases: str) -> None:
    trainer_module.plot_loss = lambda *_: None  # the loss plot is not what is tested; it costs a second per run
    cfg = load_dict(json.loads(Path(config_path).read_text()))
    dist = init_distributed(cfg.distributed)
    results = {}
    for case in ("clean", *cases):
        run_dir = Path(config_path).parent / case.replace(":", "-")
        trainer = Trainer(cfg, run_dir, log=lambda *_: None, dist=dist)
        if case != "clean":
            kind, step = case.split(":")
            inject(trainer, kind, int(step))
        summary = trainer.fit()
        finite = all(bool(torch.isfinite(p).all()) for p in trainer.parts.model.parameters())
        if dist.is_main:
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            results[case] = {"val": summary["val_loss"], "finite": finite, "events": [e.as_record() for e in trainer.guard.events],
                             "records": [r for r in records if r["kind"] == "instability"]}
    if dist.is_main:
        Path(out_path).write_text(json.dumps(results))
    shutdown(dist)


if __name__ == "__main__":
    main(*sys.argv[1:])
