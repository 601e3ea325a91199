"""Fast fake plug-in agents for tests/test_compare.py (``--method compare_agents:Good``): no network, no
training; each proposes designs around one point of levy's box and reports a path KL of 1 / beta."""
import torch

from sqdf_bbo.agents import Agent


class Good(Agent):
    """Designs around levy's optimum (x = 1): far above the pretrained model at any KL."""
    default_config = {"beta": 1.0}
    centre = 1.0

    def propose(self, n, generator):
        return self.centre + 0.3 * torch.randn(n, *self.task.design_shape, generator=generator, dtype=torch.float64)

    def observe(self, designs, values):
        pass

    def improve(self):
        return {}

    def analytic_path_kl(self):
        return 1.0 / float(self.config["beta"])


class Weak(Good):
    """Designs around x = 8, near levy's box edge: far below the pretrained model."""
    centre = 8.0
