"""Tiny backbones shared by the tests."""

import torch
from torch import nn


class TinyNet(nn.Module):
    """A tiny backbone: (B, 3, H, W) -> (B, channels, H, W) maps (pooled by build_backbone)."""

    def __init__(self, channels=8):
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)

    def forward(self, x):
        return torch.relu(self.conv(x))
