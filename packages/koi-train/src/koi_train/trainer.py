"""The training loop: step, watch for instability, log, evaluate, checkpoint. Nothing else.

Components come ready-made from `setup.build_run`; this file only calls them in order.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch

from koi_eval import estimate_loss, evaluate_hellaswag, generate, read_eval_bin, read_jsonl

from .checkpoint import checkpoint_path, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, config_to_dict
from .cuda_graphs import begin_graph_step, skip_note, skipped_graphs
from .distributed import DistInfo, barrier, full_state_dicts, load_full_state_dicts, mean_on_device
from .instability import InstabilityEvent, TrainingAborted
from .interrupt import DeferredInterrupt, StoppedAtBoundary
from .late_judging import LateReads, StepInFlight, optimizer_can_gate, step_gated
from .metrics import MetricsLog, NullMetrics, plot_loss
from .recovery import InstabilityGuard
from .reporting import ProgressReporter
from .schedule import lr_multiplier
from .setup import RunParts, build_run
from .sharded_checkpoint import is_sharded, load_sharded, save_sharded

__all__ = ["Trainer", "TrainingAborted"]


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir: Path, *, log=print, dist: DistInfo = DistInfo()) -> None:
        self.cfg, self.run_dir, self.dist = cfg, Path(run_dir), dist
        self.log = log if dist.is_main else (lambda *_: None)
        self.parts: RunParts = build_run(cfg, self.run_dir, dist=dist, log=self.log)
        # judges each step, keeps snapshots, skips or rolls back bad updates (recovery.py)
        self.guard = InstabilityGuard(cfg, self.parts, dist, loss_fn=lambda x, y: self.compute_loss(x, y), log=self.log)
        self.step = 0
        self.tokens_per_step = cfg.train.batch_size * self.parts.block_size * cfg.train.grad_accum
        self.checkpoint_dir = cfg.checkpoint.dir or str(self.run_dir / "checkpoints")
        self._hellaswag = None
        # Judge each step while the next one runs (late_judging.py) wherever the update can wait on a
        # device flag; with the optimizer in backward the update is done before any flag exists.
        self.judge_late = not cfg.train.optimizer_in_backward and (
            not self.guard.enabled or optimizer_can_gate(self.parts.optimizer))
        self._late_reads = LateReads(self.parts.device)
        self._in_flight: StepInFlight | None = None
        self._reporter: ProgressReporter | None = None
        self._metrics: MetricsLog | NullMetrics = NullMetrics()

    # state --------------------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.dist.active and self.cfg.distributed.strategy == "fsdp"

    def extra_state(self) -> dict:
        """Everything but weights and optimizer state: step, data position, RNG, detector, config."""
        state = {
            "step": self.step, "data": self.parts.train_data.state_dict(), "rng": {"torch": torch.get_rng_state()},
            "instability": self.guard.state_dict(), "lr_cut_until": self.guard.lr_cut_until, "config": config_to_dict(self.cfg),
        }
        if self.parts.mixture is not None:
            state["mixture"] = self.parts.mixture.state_dict()
        return state

    def state_dict(self) -> dict:
        """Full (unsharded) state on every rank; under FSDP gathering it is a collective call."""
        p = self.parts
        model_state, optimizer_state = full_state_dicts(p.model, p.optimizer, self.cfg.distributed.strategy, self.dist)
        return {"model": model_state, "optimizer": optimizer_state, **self.extra_state()}

    def load_state_dict(self, state: dict) -> None:
        p = self.parts
        if "model" in state:
            load_full_state_dicts(p.model, p.optimizer, state["model"], state["optimizer"], self.cfg.distributed.strategy, self.dist)
        p.train_data.load_state_dict(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        self.guard.load_state_dict(state["instability"], lr_cut_until=state["lr_cut_until"])
        self.step = state["step"]
        if self.parts.mixture is not None:
            self.parts.mixture.load_state_dict(state["mixture"])

    def save(self) -> str:
        """Rank 0 writes; every rank waits, so nobody runs ahead of a checkpoint being written."""
        if self.sharded:
            return save_sharded(self.checkpoint_dir, self.step, self.parts.model, self.parts.optimizer.optimizers,
                                self.extra_state(), self.dist, keep_last=self.cfg.checkpoint.keep_last)
        state = self.state_dict()
        path = checkpoint_path(self.checkpoint_dir, self.step)
        if self.dist.is_main:
            save_checkpoint(self.checkpoint_dir, self.step, state, keep_last=self.cfg.checkpoint.keep_last)
        barrier(self.dist)
        return path

    # one step -----------------------------------------------------------------------------
    def _autocast(self):
        dtype = self.parts.autocast_dtype
        return torch.autocast(self.parts.device.type, dtype=dtype) if dtype else nullcontext()

    def compute_loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.parts.cuda_graphs:  # the last call's outputs are read by now: let the replay reuse them
            begin_graph_step()
        with self._autocast():
            return self.parts.objective(x, y)

    def train_step(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward/backward over grad_accum micro-batches and clipping; (loss, grad norm) stay on the device.

        The loss is the mean over ranks (on the device too), so every rank's instability detector
        sees the same numbers and decides the same way.
        """
        p, tc = self.parts, self.cfg.train
        if tc.optimizer_in_backward:  # the update happens inside backward, so its lr must be set first
            p.optimizer.set_lr_multiplier(lr_multiplier(self.step, tc))
        total: torch.Tensor | None = None
        for _ in range(tc.grad_accum):
            x, y = p.train_data.next_batch()
            loss = self.compute_loss(x.to(p.device, non_blocking=True), y.to(p.device, non_blocking=True))
            if tc.optimizer_in_backward:  # backward writes the weights: the snapshot's copy must be done
                self.guard.snapshots.fence()
            (loss / tc.grad_accum).backward()
            part = loss.detach().float() / tc.grad_accum  # summed on the device: no host read per micro-batch
            total = part if total is None else total + part
        if tc.optimizer_in_backward:
            grad_norm = p.optimizer.take_grad_norm()
        else:
            params = [q for q in p.model.parameters() if q.grad is not None]
            max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        return mean_on_device(total, self.dist), grad_norm.float().to(total.device)

    def _judge_now(self, loss_t: torch.Tensor, norm_t: torch.Tensor) -> tuple[float, float]:
        """Read both numbers (one transfer, one drain of the GPU's queue), judge, then update or not."""
        loss, grad_norm = (float(v) for v in torch.stack([loss_t.double(), norm_t.double()]).tolist())
        self._apply_update(self.guard.after_step(self.step, loss, grad_norm))
        return loss, grad_norm

    def _apply_update(self, event: InstabilityEvent | None) -> None:
        """Step the optimizer unless the step raised an event: a suspect update is never applied."""
        p = self.parts
        p.optimizer.set_lr_multiplier(self.guard.lr_multiplier(self.step))
        if event is None:
            self.guard.snapshots.fence()
            p.optimizer.step()
        p.optimizer.zero_grad()

    def _launch_update(self, loss_t: torch.Tensor, norm_t: torch.Tensor) -> None:
        """The late-judged update: gated on the device by the verdict the host will reach one step later."""
        p = self.parts
        skip = self.guard.device_gate(loss_t, norm_t) if self.guard.enabled else None
        multiplier = self.guard.scheduled_multiplier(self.step)
        p.optimizer.set_lr_multiplier(multiplier)
        self.guard.snapshots.fence()  # the update must not overtake the snapshot's copy (side stream)
        step_gated(p.optimizer, skip)
        p.optimizer.zero_grad()
        lr = p.optimizer.optimizers[0].param_groups[0]["lr"]
        self._in_flight = self._late_reads.launch(self.step, loss_t, norm_t, self.guard.data_before_step, lr)

    def _settle(self) -> bool:
        """Judge the step in flight, if any, and log it; True when that restored older weights
        (the step run since on the discarded ones must then be redone)."""
        flight, self._in_flight = self._in_flight, None
        if flight is None:
            return False
        loss, grad_norm = flight.read()
        event = self.guard.after_step(flight.step, loss, grad_norm, data_before=flight.data_before)
        self.guard.lr_multiplier(flight.step)  # its side effect (a new history after an LR jump) belongs after the judgment
        self._log_step(flight.step + 1, loss, grad_norm, flight.lr)
        return event is not None and event.restored_step is not None

    def _log_step(self, done: int, loss: float, grad_norm: float, lr: float) -> None:
        """A progress line and a metrics record every log_every steps and after the last one."""
        self._reporter.note_loss(loss)
        if done % self.cfg.train.log_every == 0 or done == self.cfg.train.steps:
            record, line = self._reporter.record(done, loss, grad_norm, lr)
            self._metrics.write(record)
            self.log(line)

    # evaluation ---------------------------------------------------------------------------
    @property
    def eval_model(self):
        """Logits function for evaluation: the plain model, or the objective when FSDP holds the weights sharded."""
        return self.parts.objective if self.sharded else self.parts.model

    def evaluate(self, *, full: bool = False) -> dict | None:
        p, ec = self.parts, self.cfg.eval
        if not p.val_shards:
            return None
        p.model.eval()
        windows = dict(block_size=p.block_size, batch_size=self.cfg.train.batch_size, fraction=1.0 if full else ec.sample_fraction,
                       seed=self.cfg.seed, max_windows=None if full else ec.max_windows, device=p.device)
        with self._autocast():
            est = estimate_loss(self.eval_model, p.val_shards, max_seconds=None if full else ec.max_seconds, **windows)
            record = {"kind": "eval", "step": self.step, "tokens": self.step * self.tokens_per_step, **est.as_record("val")}
            if p.mixture is not None:  # every expert on the same windows, never time-bounded, so they compare
                record.update(p.mixture.evaluate_experts(lambda fn: estimate_loss(fn, p.val_shards, **windows).loss))
            if p.sparsity is not None:  # the same windows with only the predicted MLP neurons computed
                record.update(p.sparsity.evaluate(lambda: estimate_loss(self.eval_model, p.val_shards, **windows).loss, est.loss))
            if ec.hellaswag:
                result = evaluate_hellaswag(self.eval_model, self.hellaswag_examples(), block_size=p.block_size, device=p.device,
                                            limit=ec.hellaswag_limit)
                record.update(result.as_record())
        p.model.train()
        return record

    def hellaswag_examples(self):
        if self._hellaswag is None:
            path = self.cfg.eval.hellaswag
            if path.endswith(".bin"):
                self._hellaswag = read_eval_bin(path)
            elif self.parts.tokenizer is None:
                raise ConfigError("", "eval.hellaswag", "a JSONL file needs data.tokenizer to encode it")
            else:
                self._hellaswag = read_jsonl(path, lambda s: self.parts.tokenizer.encode(s, disallowed_special=()))
        return self._hellaswag

    def sample_text(self) -> str | None:
        p, ec = self.parts, self.cfg.eval
        if p.tokenizer is None or ec.sample_prompt is None:
            return None
        p.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed)
        prompt = p.tokenizer.encode(ec.sample_prompt) or [p.tokenizer.eot_id]
        with self._autocast():
            ids = generate(self.eval_model, prompt, max_new_tokens=ec.sample_tokens, block_size=p.block_size, temperature=0.8,
                           top_k=40, eot_id=p.tokenizer.eot_id, vocab_limit=p.tokenizer.vocab_size, generator=gen, device=p.device)
        p.model.train()
        return ec.sample_prompt + p.tokenizer.decode(ids)

    # the loop -----------------------------------------------------------------------------
    def resume(self, checkpoint: str | None = None) -> None:
        path = checkpoint or latest_checkpoint(self.checkpoint_dir)
        if path is None:
            raise FileNotFoundError(f"{self.checkpoint_dir}: no step_*.pt checkpoint to resume from")
        if is_sharded(path):
            self.load_state_dict(load_sharded(path, self.parts.model, self.parts.optimizer.optimizers))
        else:
            self.load_state_dict(load_checkpoint(path))
        self.log(f"resumed from {path} at step {self.step}")

    def _stop_at_boundary(self, metrics: MetricsLog) -> None:
        """Between two steps every piece of state agrees, so this checkpoint resumes bit for bit."""
        self._settle()
        metrics.close()
        path = self.save()
        self.log(f"interrupted at step {self.step}: saved {path}; continue with: koi-train resume {self.run_dir}")
        raise StoppedAtBoundary

    def fit(self) -> dict:
        cfg, p = self.cfg, self.parts
        metrics = MetricsLog(self.run_dir / "metrics.jsonl", truncate_after_step=self.step) if self.dist.is_main else NullMetrics()
        reporter = ProgressReporter(cfg.train.steps, self.tokens_per_step, p.params["total"], p.block_size, p.model,
                                    p.device, start_step=self.step, world_size=self.dist.world_size)
        self._reporter, self._metrics = reporter, metrics
        for line in p.report:
            self.log(line)
        if p.memory is not None and self.step == 0:  # beside the measured peak of the train records
            metrics.write({"kind": "memory_estimate", "step": 0, "total_gib": p.memory.total / 2**30,
                           **{f"{k}_gib": v / 2**30 for k, v in vars(p.memory).items()}})
        p.model.train()
        if p.quant_warmup is not None:  # also right for a finished run resumed only to evaluate: quantized
            p.quant_warmup.before_step(min(self.step, cfg.train.steps - 1))
        self.guard.begin(metrics, self.step)
        interrupt = DeferredInterrupt().__enter__()  # Ctrl-C waits for a step boundary (see interrupt.py)
        graphs_checked = False
        try:
            while self.step < cfg.train.steps:
                if interrupt.requested_on_any_rank(self.dist, p.device):
                    self._stop_at_boundary(metrics)
                if p.sparsity is not None:  # 2:4 masks: dense first, then recomputed on schedule
                    p.sparsity.before_step(self.step)
                if p.quant_warmup is not None:  # full precision first, then the plan's formats
                    p.quant_warmup.before_step(self.step)
                self.guard.before_step(self.step)  # last: a snapshot sees this step's masks, and nothing writes after it
                loss_t, norm_t = self.train_step()
                if self.judge_late:
                    if self._settle():  # the previous step rolled the weights back: this one ran on discarded weights
                        p.optimizer.zero_grad()
                        p.train_data.load_state_dict(self.guard.data_before_step)
                        continue
                    self._launch_update(loss_t, norm_t)
                else:
                    loss, grad_norm = self._judge_now(loss_t, norm_t)
                    self._log_step(self.step + 1, loss, grad_norm, p.optimizer.optimizers[0].param_groups[0]["lr"])
                self.step += 1
                if p.cuda_graphs and not graphs_checked:  # compiled and captured by now: say if graphs were refused
                    graphs_checked = True
                    if note := skip_note(skipped_graphs()):
                        self.log(note)
                # A switch, an eval or a checkpoint sees every update judged: each settles the step in flight first.
                if p.mixture is not None and self.step % cfg.mixture.switch == 0 and self.step < cfg.train.steps:
                    self._settle()
                    active = self.guard.planned_change(self.step, p.mixture.switch)  # judged first, then a new history
                    metrics.write({"kind": "mixture_switch", "step": self.step, "active": active})
                if cfg.eval.every and self.step % cfg.eval.every == 0 and self.step < cfg.train.steps:
                    self._settle()
                    last_eval = self.evaluate()
                    if last_eval:
                        metrics.write(last_eval)
                        bounded = ", cut short by eval.max_seconds" if last_eval["val_time_bounded"] else ""
                        self.log(f"eval step {self.step}: val loss {last_eval['val_loss']:.4f} +- {last_eval['val_stderr']:.4f} "
                                 f"({last_eval['val_windows']} windows{bounded})" + mixture_summary(last_eval)
                                 + predictor_summary(last_eval))
                if cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0 and self.step < cfg.train.steps:
                    self._settle()
                    self.save()
            self._settle()
            self.guard.finish(self.step)  # the last update has no next step to judge it
            if interrupt.requested_on_any_rank(self.dist, p.device):
                self._stop_at_boundary(metrics)
        except KeyboardInterrupt as exc:
            metrics.close()
            if not isinstance(exc, StoppedAtBoundary):  # it may have landed mid-step: a checkpoint of that would not resume exactly
                self.log(f"stopped during step {self.step + 1} without a checkpoint; koi-train resume {self.run_dir} "
                         "continues from the last one")
            raise
        except BaseException:
            metrics.close()
            raise
        finally:
            interrupt.__exit__(None, None, None)
        path = self.save()
        try:  # the last step is saved: from here a Ctrl-C stops at once (resume evaluates again)
            with DeferredInterrupt.immediate():
                final, summary = self._final_records(path)
            for record in (final, summary):  # together, last: a Ctrl-C before them leaves no half of this ending to repeat on resume
                if record:
                    metrics.write(record)
            metrics.close()
            with DeferredInterrupt.immediate():
                if self.dist.is_main:
                    plot_loss(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        except KeyboardInterrupt:
            metrics.close()
            self.log(f"interrupted after the last step ({path} is saved); koi-train resume {self.run_dir} finishes the run")
            raise StoppedAtBoundary from None
        written = [name for name in ("config.json", "metrics.jsonl", "loss.png") if (self.run_dir / name).exists()]
        self.log(f"done: {self.run_dir} ({', '.join(written)}, checkpoints/)")
        return summary

    def _final_records(self, path: str) -> tuple[dict | None, dict]:
        """The end-of-run evaluation and sample, and the summary record that names them and the checkpoint."""
        cfg, p = self.cfg, self.parts
        summary = {"kind": "summary", "step": self.step, "tokens": self.step * self.tokens_per_step,
                   "parameters": p.params["total"], "parameters_trained": p.params["trained"], "checkpoint": path}
        final = self.evaluate(full=cfg.eval.full_at_end)
        if final:
            kind = "full" if not final["val_sampled"] else "sampled"
            self.log(f"final {kind} val loss {final['val_loss']:.4f} +- {final['val_stderr']:.4f} over {final['val_tokens']:,} tokens"
                     + mixture_summary(final) + predictor_summary(final))
            summary["val_loss"] = final["val_loss"]
            if p.mixture is not None:  # the checkpoint then names the best expert, which export takes
                summary["checkpoint"] = self.save()
        sample = self.sample_text()
        if sample is not None:
            self.log("sample:\n" + sample)
            summary["sample"] = sample
        return final, summary


def mixture_summary(record: dict) -> str:
    if "expert_losses" not in record:
        return ""
    experts = ", ".join(f"{loss:.3f}" for loss in record["expert_losses"])
    return f"; experts [{experts}], best #{record['best_expert']}, ensemble {record['ensemble_loss']:.4f}"



def predictor_summary(record: dict) -> str:
    if "predictor_recall" not in record:
        return ""
    return (f"; predicted MLP neurons only: {record['sparse_mlp_val_loss']:.4f} ({record['sparse_mlp_loss_change']:+.4f}), "
            f"recall {record['predictor_recall']:.3f}, {record['mlp_neurons_skipped']:.0%} of neurons skipped")
