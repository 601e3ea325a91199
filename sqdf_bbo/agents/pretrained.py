"""Reference agent: samples the frozen pretrained model and never fine-tunes (the zero line)."""
from __future__ import annotations

from sqdf_bbo.agents.base import DiffusionAgent


class PretrainedAgent(DiffusionAgent):
    """propose = DDIM samples of the pretrained backbone; improve does nothing."""

    def improve(self) -> dict[str, float]:
        return {}
