"""The one torch training loop every skfg estimator uses.

Estimators build their modules, a batch iterator and a loss function, then call
:func:`fit_loop`. It owns epochs, the optimiser step, the LR schedule, validation and
early stopping (restoring the best weights), the per-epoch history, checkpoints for
resuming a run that was killed, and clean handling of ``KeyboardInterrupt``.
"""

import contextlib
import copy
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._files import atomic_path
from ._memory import kept_freed_memory
from ._messages import progress_bar, warn

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "step", "constant")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")

logger = logging.getLogger(__name__)
# the keys of an epoch's record in the history, in this order (those that apply)
RECORD_KEYS = ("epoch", "loss", "val_score", "val_loss", "seconds", "train_seconds", "n_samples", "lr", "lr_halvings",
               "grad_norm", "clipped")


def make_generator(random_state):
    """Seed torch's global RNG (dropout, augmentation) and return a seeded ``torch.Generator``.

    The same ``random_state`` gives bit-identical CPU runs.
    """
    seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def eval_mode(module):
    """Run the block with ``module`` in eval mode and without gradients; its mode is restored."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def make_optimizer(param_groups, name="adam", lr=1e-3, weight_decay=0.0, momentum=0.9):
    """Optimiser ``name`` over ``param_groups``.

    Parameters
    ----------
    param_groups : list of dict
        ``{"params": iterable, "lr_scale": float}``; a group's learning rate is
        ``lr * lr_scale`` (e.g. a smaller rate for a pretrained backbone than for the head).
        A group may set its own ``"weight_decay"`` (e.g. 0 for impostor positions);
        otherwise biases and normalisation weights (parameters of one dimension) get
        none. Parameters that do not require gradients are left out.
    name : {"adam", "adamw", "sgd"}
    """
    groups = []
    for group in param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        # no weight decay on biases and normalisation weights (1-d parameters), which
        # decay would only pull away from their pretrained values
        for part in ([p for p in params if p.ndim > 1], [p for p in params if p.ndim <= 1]):
            if not part:
                continue
            entry = {"params": part, "lr": lr * group.get("lr_scale", 1.0)}
            if "weight_decay" in group:
                entry["weight_decay"] = group["weight_decay"]
            elif part[0].ndim <= 1:
                entry["weight_decay"] = 0.0
            groups.append(entry)
    if not groups:
        raise ValueError("nothing to train: no parameter requires a gradient")
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=momentum > 0)
    raise ValueError(f"Unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")


# Fewest mini-batches a warm-up lasts (when there is one; at most half the training). On a
# small training set one epoch is a few steps: 12 stanford_cars_a classes (280 images,
# 9 steps per epoch) fine-tuned at lr 0.01 collapsed to one class after a 9- or 27-step
# warm-up and trained after a 72-step one; the full set's 1 epoch is 76 steps.
MIN_WARMUP_STEPS = 100

# The mini-batches an epoch of the set the fine-tuning recipe's peak rate was chosen on
# (stanford_cars_a: 2,403 images, 76 batches of 32), rounded down.
FULL_STEPS_PER_EPOCH = 64


def small_set_lr_factor(steps_per_epoch, full_steps=FULL_STEPS_PER_EPOCH):
    """The factor of the recipe's peak learning rate for an epoch of ``steps_per_epoch``
    mini-batches: ``min(1, steps_per_epoch / full_steps)``.

    On a small training set an epoch is a few small mini-batches (``batch_size="auto"``
    keeps 8 an epoch): at the recipe's rate the loss of 100 images climbed through the
    warm-up until it tripped the divergence guard (exploratory fits, not kept). The rate scales with
    the mini-batches an epoch, so a set of ``full_steps`` batches or more keeps the rate
    the recipe was measured with; below about 290 images (8 or 9 batches an epoch) it is
    about a seventh. Adam's square-root rule (``sqrt(steps_per_epoch / full_steps)``)
    still tripped the guard (``benchmarks/results/small_data.md``).

    Examples
    --------
    >>> small_set_lr_factor(64), small_set_lr_factor(16), small_set_lr_factor(200)
    (1.0, 0.25, 1.0)
    """
    return float(min(1.0, max(1, int(steps_per_epoch)) / full_steps))


def make_scheduler(optimizer, schedule, max_epochs, steps_per_epoch=1, warmup_epochs=0, min_warmup_steps=0):
    """Learning-rate schedule, stepped after every mini-batch.

    A linear warm-up over the first ``warmup_epochs`` (from ``lr / steps`` to ``lr``),
    lasting at least ``min_warmup_steps`` mini-batches when ``warmup_epochs > 0`` (that
    floor at most half of the steps), then ``"cosine"`` annealing to 0 at the end of
    ``max_epochs``, ``"step"`` (x0.1 at 1/2 and 3/4 of the epochs) or ``"constant"``.

    Returns None for a constant rate without warm-up.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    steps_per_epoch = max(1, int(steps_per_epoch))
    total = max(1, max_epochs * steps_per_epoch)
    warm = 0
    if warmup_epochs:
        warm = min(max(int(round(warmup_epochs * steps_per_epoch)), min(min_warmup_steps, total // 2)), total - 1)
    if schedule == "constant" and not warm:
        return None
    milestones = sorted({max(1, max_epochs // 2), max(1, (3 * max_epochs) // 4)})

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        if schedule == "step":
            return 0.1 ** sum(step >= m * steps_per_epoch for m in milestones)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resolve_precision(precision, device):
    """The autocast dtype of a training run (None: float32).

    ``"auto"`` is float16 with gradient scaling on CUDA and float32 on the CPU: on CPUs,
    bfloat16 autocast of skfg's depthwise-convolution backbones was measured several
    times *slower* than float32 on a CPU without native bfloat16
    (``benchmarks/results/recipe_steps.md``), so it is opt-in. A
    ``"bfloat16"`` request on a CPU without native bfloat16 support falls back to float32
    with a warning.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    cuda = str(device).startswith("cuda")
    if precision == "auto":
        return torch.float16 if cuda else None
    if precision == "float32":
        return None
    if precision == "float16" and not cuda:
        warn("precision='float16' needs a CUDA device; training in float32.")
        return None
    if precision == "bfloat16" and not cuda and not _cpu_has_bf16():
        warn("precision='bfloat16': this CPU has no native bfloat16 support; training in float32.")
        return None
    return torch.bfloat16 if precision == "bfloat16" else torch.float16


def _cpu_has_bf16():
    """Whether the CPU computes in bfloat16 natively (AVX512-BF16 or AMX on Linux; other
    systems are trusted)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # pragma: no cover - not Linux
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_state(module):
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class _Checkpoint:
    """``checkpoint.pt`` in a directory, written atomically after every epoch."""

    def __init__(self, directory, signature):
        self.path = Path(directory) / "checkpoint.pt"
        self.signature = signature

    def load(self):
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise TypeError(f"expected a dict, got {type(state).__name__}")
        except Exception as exc:  # truncated, corrupt, or not a checkpoint (never unpickled unsafely)
            raise ValueError(
                f"The checkpoint {self.path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it is "
                "damaged or not an skfg checkpoint. Delete it to train from the start, or use another "
                "checkpoint_dir."
            ) from None
        if state.get("signature") != self.signature:
            raise ValueError(
                f"The checkpoint {self.path} belongs to a different model or data "
                "(another estimator, other parameters or other training data); delete it or "
                "use another checkpoint_dir."
            )
        return state

    def save(self, state):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            torch.save(dict(state, signature=self.signature), tmp)


class _Divergence:
    """The divergence guard of :func:`fit_loop` (``divergence_factor``): remembers the state at
    the lowest-loss epoch and goes back to it, with the learning rates halved, when an
    epoch's loss rises above ``factor`` times that lowest loss."""

    def __init__(self, factor, epoch_offset=0):
        self.factor, self.epoch_offset = factor, epoch_offset

    def after_epoch(self, run, epoch, epoch_loss):
        """Check the epoch's mean training loss; roll ``run`` (a :class:`TrainingState`) back
        when it diverged, else remember it when it is the lowest so far."""
        if self.factor is None:
            return
        if epoch_loss > self.factor * run.lowest_loss:
            rates = [g["lr"] for g in run.optimizer.param_groups]
            run.load_snapshot(run.lowest)
            for g, rate in zip(run.optimizer.param_groups, rates):
                g["lr"] = rate / 2
            if run.scheduler is not None:
                run.scheduler.base_lrs = [rate / 2 for rate in run.scheduler.base_lrs]
            run.lr_halvings += 1
            warn(f"The training loss rose to {epoch_loss:.4g} at epoch {self.epoch_offset + epoch + 1}, above "
                 f"{self.factor:g} x its lowest ({run.lowest_loss:.4g}): the run diverged. Going back to the weights "
                 f"of that epoch with the learning rates halved (x{0.5 ** run.lr_halvings:g} in all).", RuntimeWarning)
        elif epoch_loss < run.lowest_loss:
            run.lowest_loss = epoch_loss
            run.lowest = run.snapshot()


class TrainingState:
    """Everything a training run changes, in one place: the module, the optimiser, the
    schedule, the float16 gradient scaler, the EMA of the weights, the random number
    generators, the counters (epoch, history, best score, epochs without progress, lowest
    loss, learning-rate halvings) and the best and lowest-loss snapshots.

    :meth:`state_dict` / :meth:`load_state_dict` are what a checkpoint holds (its keys
    are those of the checkpoints written before this class existed).
    """

    COUNTERS = ("epoch", "history", "best", "best_epoch", "bad_epochs", "lowest_loss", "lr_halvings")

    def __init__(self, module, optimizer, scheduler=None, precision=None, ema_decay=None, generator=None):
        self.module, self.optimizer, self.scheduler, self.generator = module, optimizer, scheduler, generator
        device_type = next((p.device.type for p in module.parameters()), "cpu")
        self.autocast = (lambda: torch.autocast(device_type, dtype=precision)) if precision is not None \
            else contextlib.nullcontext
        self.scaler = torch.amp.GradScaler(device_type) if precision == torch.float16 else None
        self.ema = None
        if ema_decay:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(module, multi_avg_fn=get_ema_multi_avg_fn(ema_decay), use_buffers=True)
        self.epoch, self.history, self.best, self.best_epoch, self.bad_epochs = 0, [], [-np.inf, np.inf], 0, 0
        self.lowest_loss, self.lr_halvings = np.inf, 0
        self.best_weights = _cpu_state(module)
        self.lowest = None  # snapshot() at the lowest-loss epoch

    def snapshot(self):
        """``(module state, optimiser state, EMA state)``, copies on the CPU."""
        return (_cpu_state(self.module), copy.deepcopy(self.optimizer.state_dict()),
                copy.deepcopy(self.ema.state_dict()) if self.ema is not None else None)

    def load_snapshot(self, snap):
        self.module.load_state_dict(snap[0])
        self.optimizer.load_state_dict(snap[1])
        if self.ema is not None:
            self.ema.load_state_dict(snap[2])

    def train_step(self, batch, step, max_grad_norm, params):
        """One optimiser step on ``batch``; ``(loss, n_samples, gradient norm or None)``."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, n = step(batch)
        loss = loss.float()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the training loss became {loss.item()} at epoch {self.epoch + 1}; lower lr.")
        norm, scaler = None, self.scaler
        if scaler is None:
            loss.backward()
        else:
            scaler.scale(loss).backward()
            if max_grad_norm is not None:
                scaler.unscale_(self.optimizer)
        if max_grad_norm is not None:
            norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
        if scaler is None:
            self.optimizer.step()
        else:
            scaler.step(self.optimizer)
            scaler.update()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return float(loss.detach()), n, norm

    def train_epoch(self, batches, step, max_grad_norm, params):
        """One epoch of :meth:`train_step`: the start of its record (epoch, mean loss,
        n_samples, and with ``max_grad_norm`` the mean norm and the fraction clipped)."""
        total, count, norms = 0.0, 0, []
        for batch in batches:
            loss, n, norm = self.train_step(batch, step, max_grad_norm, params)
            total, count = total + loss * n, count + n
            if norm is not None:
                norms.append(norm)
        record = {"epoch": self.epoch + 1, "loss": total / max(count, 1), "n_samples": count}
        if max_grad_norm is not None:
            record["grad_norm"] = float(np.mean(norms)) if norms else None
            record["clipped"] = float(np.mean(np.asarray(norms) > max_grad_norm)) if norms else None
        return record

    @contextlib.contextmanager
    def averaged(self):
        """The module holds the EMA weights inside (without EMA: as it is), the trained ones after."""
        if self.ema is None:
            yield
            return
        trained = _cpu_state(self.module)
        self.module.load_state_dict(self.ema.module.state_dict())
        yield
        self.module.load_state_dict(trained)  # training goes on from the trained (not averaged) weights

    def record(self, record, keep_last=False):
        """Add an epoch's record; keep the module's weights when its validation is the best
        (higher score, or equal with a lower loss; always without validation, and with
        ``keep_last``)."""
        self.history.append(record)
        self.epoch = record["epoch"]
        score, val_loss = record["val_score"], record["val_loss"]
        best_score, best_loss = self.best
        better = score is not None and (score > best_score or (score == best_score and val_loss < best_loss))
        if better:
            self.best = [score, val_loss]
        if better or score is None or keep_last:
            self.best_epoch, self.bad_epochs = self.epoch, 0
            self.best_weights = _cpu_state(self.module)
        else:
            self.bad_epochs += 1

    def state_dict(self):
        return {
            **{k: getattr(self, k) for k in self.COUNTERS},
            "module": _cpu_state(self.module),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "torch_rng": torch.get_rng_state(),
            "generator_rng": self.generator.get_state() if self.generator is not None else None,
            "best_weights": self.best_weights,
            "lowest": self.lowest,
        }

    def load_state_dict(self, saved):
        self.module.load_state_dict(saved["module"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        if self.scaler is not None:
            self.scaler.load_state_dict(saved["scaler"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        if self.generator is not None:
            self.generator.set_state(saved["generator_rng"])
        self.best_weights = saved["best_weights"]
        self.lowest = saved.get("lowest")
        for k in self.COUNTERS:
            if k in saved:
                setattr(self, k, saved[k])


def _report(progress, record, epoch_offset, max_epochs):
    """An epoch's log line (numbered as in ``history_``) and progress-bar step."""
    score = "-" if record["val_score"] is None else f"{record['val_score']:.4f}"
    logger.info("epoch %d/%d: loss %.4f, val score %s, %.1f s", epoch_offset + record["epoch"],
                epoch_offset + max_epochs, record["loss"], score, record["seconds"])
    # (no refresh of its own: a bar still within its delay stays hidden, and is not left half-drawn)
    progress.set_postfix(loss=f"{record['loss']:.4f}", val=record["val_score"], refresh=False)
    progress.update(1)


def fit_loop(module, batches, step, *, optimizer, scheduler=None, max_epochs, validate=None, patience=None,
             generator=None, checkpoint_dir=None, signature="", verbose=False, set_train_mode=None,
             epoch_callback=None, precision=None, ema_decay=None, max_grad_norm=None, divergence_factor=None,
             epoch_offset=0, keep="best"):
    """Train ``module`` for up to ``max_epochs`` epochs.

    Parameters
    ----------
    module : nn.Module
        Holds every trained parameter; its state is what is checkpointed and restored.
    batches : iterable
        Re-iterated each epoch (e.g. a ``DataLoader`` whose shuffling uses ``generator``).
    step : callable
        ``step(batch) -> (loss, n_samples)``; the loop does backward and the optimiser step.
    optimizer, scheduler : torch optimiser and LR scheduler, stepped every mini-batch.
    validate : callable, optional
        ``validate() -> (score, loss)`` after every epoch, in eval mode: an epoch is better
        when its score is higher, or equal with a lower loss (small validation sets' scores
        move in steps). With it the best epoch's weights are kept (``keep``).
    patience : int, optional
        Stop after this many epochs without a better validation score.
    generator : torch.Generator, optional
        The batches' generator (checkpointed: a resumed run is identical).
    checkpoint_dir : str, optional
        Save the training state there after each epoch, and resume from it.
    signature : str
        Identifies the run: a checkpoint with another signature is refused.
    verbose : bool, int or "auto" (:func:`skfg._messages.progress_bar`)
    set_train_mode : callable, optional
        Puts the module in training mode (default ``module.train()``); estimators use it
        to keep frozen BatchNorm layers in eval mode.
    epoch_callback : callable, optional
        ``epoch_callback(epoch)`` before each epoch (0-based, also the first epoch after
        a resume), e.g. to refresh tied impostors.
    precision : torch.dtype, optional
        Run ``step`` under autocast to this dtype (:func:`resolve_precision`); float16
        uses a ``GradScaler``. The weights stay float32.
    ema_decay : float, optional
        Keep an exponential moving average of the weights (every step,
        ``torch.optim.swa_utils``); validation, the kept epoch and the result use it.
    max_grad_norm : float, optional
        Clip the gradient of the optimiser's parameters to this global L2 norm before
        each step (``torch.nn.utils.clip_grad_norm_``; after unscaling under a
        ``GradScaler``). The history then records each epoch's mean norm before clipping
        (``grad_norm``) and the fraction of steps clipped (``clipped``).
    divergence_factor : float, optional
        When an epoch's mean training loss exceeds this factor times the lowest so far,
        the module, the optimiser (and the EMA) go back to that epoch's state and every
        learning rate is halved for the rest of the run, with a ``RuntimeWarning``; the
        history records ``lr_halvings`` (so far).
    epoch_offset : int, default=0
        Epochs of the fit's earlier phases (the linear probe): warnings and log lines
        number the epochs as the estimator's ``history_`` does.
    keep : {"best", "last"}, default="best"
        With ``validate``, the best epoch's weights, or the last's (validation only reports).

    Returns
    -------
    result : dict
        ``history`` (per-epoch dicts: epoch, loss, val_score, val_loss, seconds,
        train_seconds (the mini-batches only), n_samples, lr, and with ``max_grad_norm``
        grad_norm and clipped, with ``divergence_factor`` lr_halvings), ``best_epoch``,
        ``interrupted`` and ``resumed_from`` (epoch or None).

    Notes
    -----
    ``KeyboardInterrupt`` ends training cleanly: the weights of the kept completed epoch
    are restored (never a half-updated model) and the interruption is recorded; before
    any epoch completed, the initial weights are restored and it is raised. Freed memory is kept
    for the next step while training (:func:`skfg._memory.kept_freed_memory`).
    """
    if keep not in ("best", "last"):
        raise ValueError(f"keep must be 'best' or 'last', got {keep!r}")
    run = TrainingState(module, optimizer, scheduler, precision, ema_decay, generator)
    checkpoint = _Checkpoint(checkpoint_dir, signature) if checkpoint_dir else None
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        run.load_state_dict(saved)
    resumed_from = run.epoch if saved is not None else None
    guard = _Divergence(divergence_factor, epoch_offset)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    interrupted = False
    with progress_bar(verbose, max_epochs, "epochs", "epoch", initial=run.epoch) as progress, kept_freed_memory():
        try:
            for epoch in range(run.epoch, max_epochs):
                t0 = time.perf_counter()
                if epoch_callback is not None:
                    with torch.no_grad():
                        epoch_callback(epoch)
                (set_train_mode or module.train)()
                record = run.train_epoch(batches, step, max_grad_norm, params)
                record["train_seconds"] = time.perf_counter() - t0
                guard.after_epoch(run, epoch, record["loss"])
                with run.averaged():  # (with EMA: validation and the best epoch use the averaged weights)
                    module.eval()
                    with torch.no_grad():
                        score, val_loss = (None, None) if validate is None else (float(v) for v in validate())
                    record.update(val_score=score, val_loss=val_loss, seconds=time.perf_counter() - t0,
                                  lr=optimizer.param_groups[-1]["lr"])
                    if divergence_factor is not None:
                        record["lr_halvings"] = run.lr_halvings
                    run.record({k: record[k] for k in RECORD_KEYS if k in record}, keep_last=keep == "last")
                if checkpoint is not None:
                    checkpoint.save(run.state_dict())
                _report(progress, record, epoch_offset, max_epochs)
                if patience is not None and validate is not None and run.bad_epochs >= patience:
                    break
        except KeyboardInterrupt:
            interrupted = True
            if not run.history:
                module.load_state_dict(run.best_weights)
                raise
            warn(f"Training interrupted after {epoch_offset + run.epoch} epochs; keeping the weights of epoch "
                 f"{epoch_offset + run.best_epoch}.", RuntimeWarning)
    module.load_state_dict(run.best_weights)
    module.eval()
    logger.info("training done: %d epochs, keeping epoch %d%s", epoch_offset + run.epoch,
                epoch_offset + run.best_epoch, " (interrupted)" if interrupted else "")
    return {"history": copy.deepcopy(run.history), "best_epoch": run.best_epoch, "interrupted": interrupted,
            "resumed_from": resumed_from}
