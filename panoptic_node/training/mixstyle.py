"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021), for training only.

A CNN's early feature maps carry a frame's "style" (lighting, texture, colour) in their per-channel mean
and standard deviation. With probability `p` per batch, MixStyle normalises each frame's features by their
own statistics and gives them a mix of its statistics and another frame's of the batch, with a weight drawn
from Beta(alpha, alpha): the head then sees the content of one street in the style of another, the gap a
new drive opens. It is attached to the backbone by forward hooks on the blocks whose outputs it mixes,
acts only while the backbone is in training mode, and leaves the model's parameters, export and inference
unchanged. Random draws come from torch's generator, so a resumed run replays them.
"""
from typing import List

import torch
from torch import Tensor, nn

EPS = 1e-6


def mix_style(x: Tensor, lam: Tensor, perm: Tensor) -> Tensor:
    """x B x C x H x W; lam B weights of the frame's own style; perm B: whose style it mixes with.
    The statistics are detached, as in the paper: gradients flow through the normalised content only."""
    mu = x.mean(dim=(2, 3), keepdim=True).detach()
    sig = (x.var(dim=(2, 3), keepdim=True, unbiased=False) + EPS).sqrt().detach()
    lam = lam.to(x.dtype).view(-1, 1, 1, 1)
    mu_mix = lam * mu + (1 - lam) * mu[perm]
    sig_mix = lam * sig + (1 - lam) * sig[perm]
    return (x - mu) / sig * sig_mix + mu_mix


class MixStyle:
    def __init__(self, p: float = 0.5, alpha: float = 0.1):
        self.p = p  # probability per batch
        self.beta = torch.distributions.Beta(torch.tensor(alpha), torch.tensor(alpha))

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[0] < 2 or torch.rand(()) >= self.p:
            return x
        lam = self.beta.sample((x.shape[0],))
        perm = torch.randperm(x.shape[0])
        return mix_style(x, lam, perm)

    def attach(self, backbone: nn.Module, blocks: List[int]) -> list:
        """Mix the outputs of these backbone blocks while the backbone trains; returns the hook handles."""
        def hook(module, inputs, output):
            return self(output) if module.training else output
        return [backbone._blocks[i].register_forward_hook(hook) for i in blocks]
