"""Tune's synchronous HyperBand, with brackets that go on when a trial leaves them while the others wait paused.

Tune's `HyperBandScheduler` re-examines a bracket when a trial leaves it (ends early, errors, or reports an
error and stops) only until the bracket's first halving: the flag it raises to avoid nested processing is
never lowered. After that, a trial that leaves while the rest of its rung waits paused at the milestone
leaves them paused forever, and the sweep hangs with nothing running. `HyperBand` remembers each bracket a
trial left and processes it again once none of its trials is running, which halves it, or stops its paused
trials when it is done, exactly as the last trial reaching the milestone would have.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import HyperBandScheduler


class HyperBand(HyperBandScheduler):
    """HyperBand whose brackets never wait on a trial that has left them."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._left: list[Any] = []  # brackets a trial has left since they were last processed

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        """Tune's bookkeeping, then the bracket is queued to be processed again."""
        bracket, _ = self._trial_info[trial]
        super().on_trial_remove(tune_controller, trial)
        if not any(bracket is other for other in self._left):
            self._left.append(bracket)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """Process the brackets trials have left (once nothing of theirs runs), then choose as Tune does."""
        for bracket in list(self._left):
            trials = bracket.current_trials()
            if any(t.status == Trial.RUNNING for t in trials):
                continue  # its running trials will report, and their results process it
            self._left.remove(bracket)
            if trials:
                self._process_bracket(tune_controller, bracket)
        return super().choose_trial_to_run(tune_controller)
