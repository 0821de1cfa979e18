"""--tune N: search head configurations (learning rate, dropout, L2) on the cached features.

Every trial trains a head on the train split minus the validation slice and is
scored by its best validation loss on that slice (trainer/head.py); the eval
split is never passed in, so the gate's data cannot steer the choice. The
best trial's configuration is then finished like an untuned head (refit on the
whole train split for its best epoch count, by default).

KerasTuner drives the search, through its oracle only. Its `Tuner` class cannot
be used here: KerasTuner 1.4 picks its Keras by importing `keras`, which is
Keras 3 in this environment, so it rejects tf_keras models ("Expected the
model-building function ... to return a valid Keras Model instance") whatever
TF_USE_LEGACY_KERAS says. Its `BaseTuner` with our own `run_trial` has no such
check: KerasTuner proposes the hyperparameters (RandomSearchOracle, seeded),
records the trials, and we train and score each head with tf_keras. The
first trial is the configured values, so tuning never picks something that
scored worse on the slice than the untuned head.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import keras_tuner as kt
import tf_keras as keras
from keras_tuner.engine import base_tuner

from trainer.config import TrainingConfig
from trainer.head import FitOutcome, HeadData, HeadHParams, HeadRun, finish, select_epochs

log = logging.getLogger(__name__)

OBJECTIVE = "val_loss"
# The search space (the configured value is always inside it: the ranges widen to include it).
LEARNING_RATE_RANGE = (1e-4, 1e-1)
DROPOUT_RANGE = (0.0, 0.5)
L2_CHOICES = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclasses.dataclass
class Trial:
    hparams: HeadHParams
    val_loss: float
    best_epoch: int | None
    epochs_run: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.hparams.to_dict(),
            "val_loss": self.val_loss,
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
        }


@dataclasses.dataclass
class TuneResult:
    run: HeadRun  # the finished head with the best configuration
    trials: list[Trial]
    best: Trial

    def summary(self) -> dict[str, Any]:
        return {
            "trials": len(self.trials),
            "objective": f"{OBJECTIVE} on the validation slice (min)",
            "best": self.best.to_dict(),
            "results": [t.to_dict() for t in self.trials],
        }


def search_space(params: TrainingConfig) -> kt.HyperParameters:
    """KerasTuner hyperparameters whose defaults are the configured values."""
    hp = kt.HyperParameters()
    lo, hi = LEARNING_RATE_RANGE
    hp.Float(
        "learning_rate",
        min(lo, params.learning_rate),
        max(hi, params.learning_rate),
        sampling="log",
        default=params.learning_rate,
    )
    lo, hi = DROPOUT_RANGE
    hp.Float("dropout", lo, max(hi, params.dropout), default=params.dropout)
    hp.Choice("l2", sorted({*L2_CHOICES, params.l2}), default=params.l2)
    return hp


class _ConfiguredFirstOracle(kt.oracles.RandomSearchOracle):
    """Random search whose first trial is the configured values (the space's defaults)."""

    def populate_space(self, trial_id):
        if not self.trials:  # the first trial (KerasTuner lists a trial after populating it)
            defaults = {h.name: h.default for h in self.hyperparameters.space}
            if not self._duplicate(defaults):
                return {"status": kt.engine.trial.TrialStatus.RUNNING, "values": defaults}
        return super().populate_space(trial_id)


class _HeadTuner(base_tuner.BaseTuner):
    """Runs each trial with our own tf_keras training; keeps the best model in memory."""

    def __init__(self, oracle, run_trial: Callable[[HeadHParams], tuple[keras.Model, FitOutcome]], directory):
        super().__init__(oracle, directory=directory, project_name="head", overwrite=True)
        self._run = run_trial
        self.trials: list[Trial] = []
        self.best: tuple[Trial, keras.Model, FitOutcome] | None = None
        self.error: BaseException | None = None

    def run_trial(self, trial, *args, **kwargs):
        values = trial.hyperparameters.values
        hp = HeadHParams(
            learning_rate=float(values["learning_rate"]),
            dropout=float(values["dropout"]),
            l2=float(values["l2"]),
        )
        try:
            model, outcome = self._run(hp)
        except Exception as e:
            # KerasTuner would log a failed trial and go on; an error here is not a bad
            # configuration but a broken run, so stop the search and raise it as it was.
            self.error = e
            raise kt.errors.FatalError(f"trial {len(self.trials) + 1} failed: {e}") from e
        loss = outcome.best_val_loss
        score = loss if loss is not None and math.isfinite(loss) else math.inf
        record = Trial(hp, score, outcome.best_epoch, outcome.epochs_run)
        self.trials.append(record)
        log.info(
            "tune trial %d: lr %.3g, dropout %.2f, l2 %g -> val_loss %.4f (best epoch %s of %d)",
            len(self.trials),
            hp.learning_rate,
            hp.dropout,
            hp.l2,
            score,
            outcome.best_epoch,
            outcome.epochs_run,
        )
        if self.best is None or score < self.best[0].val_loss:
            self.best = (record, model, outcome)
        # A diverged trial still reports a number, so the search goes on.
        return {OBJECTIVE: score if math.isfinite(score) else sys.float_info.max}

    def save_model(self, trial_id, model, step=0):
        pass  # the best model is kept in memory

    def load_model(self, trial):
        raise NotImplementedError("models are kept in memory, not saved per trial")


def tune_head(
    build: Callable[[HeadHParams], keras.Model],
    data: HeadData,
    params: TrainingConfig,
    trials: int,
    verbose: int = 0,
    judge: Callable[[keras.Model], float] | None = None,
) -> TuneResult:
    """Train `trials` head configurations on `data` (never the eval split), keep the best.

    `build(hp)` returns a new compiled model. Each trial is scored by its validation loss
    (the best epoch's with early stopping, else the last epoch's); the best is finished
    with `head.finish` (by default: refit on the whole train split).
    """
    if trials < 1:
        raise ValueError(f"tune_trials: expected >= 1, got {trials}")
    if not data.has_validation:
        raise ValueError("tune_trials: needs a validation slice held out from the train split")

    def run_trial(hp: HeadHParams) -> tuple[keras.Model, FitOutcome]:
        keras.utils.set_random_seed(params.seed)  # every trial starts from the same draw
        # Trials are scored on the validation slice, as the tuner's objective says, never on folds.
        return select_epochs(build, hp, data, params, verbose=verbose, folds=False)

    oracle = _ConfiguredFirstOracle(
        objective=kt.Objective(OBJECTIVE, "min"),
        max_trials=trials,
        hyperparameters=search_space(params),
        tune_new_entries=False,
        allow_new_entries=False,
        seed=params.seed,
    )
    with tempfile.TemporaryDirectory(prefix="imgpipe-tune-") as directory:
        tuner = _HeadTuner(oracle, run_trial, directory)
        # KerasTuner prints its trial banners to stdout, which is a command's JSON result.
        try:
            with contextlib.redirect_stdout(sys.stderr):
                tuner.search(verbose=0)
        except kt.errors.FatalError:
            if tuner.error is not None:
                raise tuner.error from None
            raise
    if tuner.best is None:
        raise RuntimeError("tune: no trial completed")
    best, model, outcome = tuner.best
    if len(tuner.trials) < trials:
        log.warning("tune: %d of %d trials ran (the search space ran out)", len(tuner.trials), trials)
    log.info("tune: best of %d trials: %s", len(tuner.trials), best.to_dict())
    run = finish(build, model, best.hparams, outcome, data, params, verbose=verbose, judge=judge)
    return TuneResult(run=run, trials=tuner.trials, best=best)
