"""An exponential moving average of a model's weights (Polyak averaging), the weights evaluated
and saved when a recipe asks for it: late in a schedule it smooths the last epochs' noise, which
tends to carry over to frames of drives the model never saw."""
from typing import Dict

import torch


class WeightAverage:
    """ema = d * ema + (1 - d) * weights after every step, with d ramped up from 0 early on
    (d_t = min(decay, (1 + t) / (10 + t))) so the first steps do not drag the average back to the
    initial weights. Integer buffers (counters) are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.steps = 0
        self.state: Dict[str, torch.Tensor] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.steps) / (10 + self.steps))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.current_decay()
        for k, v in model.state_dict().items():
            avg = self.state[k]
            if avg.is_floating_point():
                avg.mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                avg.copy_(v)
        self.steps += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "steps": self.steps, "state": self.state}

    def load_state_dict(self, saved: dict) -> None:
        self.decay, self.steps = saved["decay"], saved["steps"]
        self.state = {k: v.clone() for k, v in saved["state"].items()}

    def averaged_copy_into(self, model: torch.nn.Module) -> None:
        model.load_state_dict(self.state)
