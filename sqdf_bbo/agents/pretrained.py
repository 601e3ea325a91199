"""Reference agent: samples the frozen pretrained model and never fine-tunes (the zero line)."""
from __future__ import annotations

from sqdf_bbo.agents.base import DiffusionAgent


class PretrainedAgent(DiffusionAgent):
    """propose = DDIM samples of the pretrained backbone; improve does nothing.

    The policy *is* the reference module (no copy), so its path KL to the pretrained model is exactly 0.
    """

    def __init__(self, task, config=None, seed: int = 0):
        super().__init__(task, config, seed)
        self.policy = self.reference

    def improve(self) -> dict[str, float]:
        return {}
