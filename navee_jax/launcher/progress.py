"""The one-line training progress report: step, epoch, loss, steps/s, ETA."""

from __future__ import annotations

import datetime
import time


class Progress:
    def __init__(self, total_steps: int, first_step: int):
        self.total = total_steps
        self.last_step = first_step
        self.last_time = time.perf_counter()

    def line(self, step: int, epoch: int, num_epochs: int, metrics: dict[str, float]) -> str:
        now = time.perf_counter()
        rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
        self.last_step, self.last_time = step, now
        eta = datetime.timedelta(seconds=round((self.total - step) / max(rate, 1e-9)))
        extras = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k != "loss")
        return (f"step {step}/{self.total} epoch {epoch}/{num_epochs} loss {metrics['loss']:.4f} {extras} "
                f"| {rate:.2f} steps/s ETA {eta}")
