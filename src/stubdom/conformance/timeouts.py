"""The stubdomain mode's timeouts and the time bound of a whole run derived from them."""

from __future__ import annotations

from dataclasses import dataclass

#: The bound in words, as `Timeouts.bound` computes it.
BOUND_FORMULA = "2 x STARTUP + 15 x COMMAND + 4 x REFUSAL + 5.5 seconds (the --*-timeout values)"


@dataclass
class Timeouts:
    startup: float = 10.0
    command: float = 5.0
    refusal: float = 1.5  # how long a silent refusal is watched

    def bound(self) -> float:
        """Seconds within which every clause has a verdict: the sum of the budgets of
        the steps (`stubdomain._Run.steps`), so a step that uses all of its own never
        takes a later step's time.  Tearing the host down comes on top."""
        return 2 * self.startup + 15 * self.command + 4 * self.refusal + 5.5
