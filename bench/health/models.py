"""Models of the healthy/sick corpus (bench/health_corpus.toml) that no other file of the repository holds:
public architectures built from configs (no download) and planted defects. Each sick model's docstring says its
defect; each healthy one why it is healthy."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


# --- healthy -------------------------------------------------------------------------------------

class UNet(nn.Module):
    """Healthy: a small U-Net conv autoencoder with BatchNorm and a sigmoid output, trained with MSE to images in [0, 1]
    (a sigmoid before MSE is the right head for it)."""

    def __init__(self, channels: int = 16):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())
        self.down1, self.down2 = block(1, channels), block(channels, 2 * channels)
        self.mid = block(2 * channels, 2 * channels)
        self.up2 = nn.ConvTranspose2d(2 * channels, 2 * channels, 2, stride=2)
        self.dec2 = block(4 * channels, channels)
        self.up1 = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.dec1 = block(2 * channels, channels)
        self.out = nn.Sequential(nn.Conv2d(channels, 1, 1), nn.Sigmoid())

    def forward(self, x):
        d1 = self.down1(x)                                   # (B, C, H, W)
        d2 = self.down2(F.max_pool2d(d1, 2))                 # (B, 2C, H/2, W/2)
        m = self.mid(F.max_pool2d(d2, 2))                    # (B, 2C, H/4, W/4)
        u2 = self.dec2(torch.cat([self.up2(m), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        return self.out(u1)


def unet_inputs(batch_size: int = 8):
    return (torch.rand(batch_size, 1, 32, 32),)


def unet_mse(output):
    """MSE reconstruction of a smooth target image in [0, 1]."""
    target = torch.linspace(0, 1, output.shape[-1], device=output.device).expand_as(output)
    return F.mse_loss(output, target)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class ResNet18(nn.Module):
    """Healthy: torchvision's resnet18 architecture (BasicBlock x [2, 2, 2, 2], He init, zero-free), written out here
    because torchvision is not installed: 11,689,512 parameters for 1000 classes, as torchvision's."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.fc = nn.Linear(512, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet_inputs(batch_size: int = 4):
    return (torch.randn(batch_size, 3, 64, 64),)


def classification_ce(output):
    """Cross-entropy against fixed labels (class i % C)."""
    labels = torch.arange(output.shape[0], device=output.device) % output.shape[-1]
    return F.cross_entropy(output, labels)


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration
    return T5ForConditionalGeneration(T5Config(vocab_size=256, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                               num_heads=4, decoder_start_token_id=0))


def t5_inputs(batch_size: int = 4):
    return {"input_ids": torch.randint(1, 256, (batch_size, 16)), "labels": torch.randint(1, 256, (batch_size, 8))}


def tiny_vit():
    from transformers import ViTConfig, ViTForImageClassification
    return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                                               num_labels=10))


def vit_inputs(batch_size: int = 4):
    return {"pixel_values": torch.randn(batch_size, 3, 32, 32), "labels": torch.arange(batch_size) % 10}


def tiny_clip():
    from transformers import CLIPConfig, CLIPModel
    text = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "max_position_embeddings": 32}
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=32))


def clip_inputs(batch_size: int = 4):
    return {"input_ids": torch.randint(1, 256, (batch_size, 12)), "pixel_values": torch.randn(batch_size, 3, 32, 32),
            "return_loss": True}


# --- sick ----------------------------------------------------------------------------------------

class LogOfZero(nn.Module):
    """Sick: log of a ReLU output (a 'log-probability' of an activation that is exactly 0 for about half the
    entries): log(0) = -inf in forward, NaN gradients in backward."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(torch.log(torch.relu(self.proj(x))))


def small_inputs(batch_size: int = 16):
    return (torch.randn(batch_size, 16),)


class MaskLeak(nn.Module):
    """Sick: a set encoder that is given a padding mask and ignores it: it mean-pools over padded positions too, so
    a sample's output changes with how much padding its batch has."""

    def __init__(self, dim: int = 32):
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x, padding_mask):
        return self.head(torch.relu(self.proj(x)).mean(dim=1))        # the bug: padding_mask unused


def mask_inputs(batch_size: int = 8, tokens: int = 12):
    x = torch.randn(batch_size, tokens, 32)
    padding_mask = torch.arange(tokens).unsqueeze(0) >= torch.randint(max(1, tokens // 3), tokens + 1, (batch_size, 1))
    return (x, padding_mask)


class MixedBatch(nn.Module):
    """Sick: normalises each feature over the batch dimension in forward (a hand-written 'batch norm' also at
    inference): every sample's output depends on the other samples of its batch."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(16, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.proj(x)
        h = (h - h.mean(dim=0, keepdim=True)) / (h.std(dim=0, keepdim=True) + 1e-5)   # the bug: over the batch
        return self.head(torch.relu(h))


class Regressor(nn.Module):
    """Sick with the corpus entry's options: a plain MLP regressor, healthy at lr 1e-3, trained at lr 5 (the entry
    passes --lr 5): training diverges."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x):
        return self.net(x)


def regression_mse(output):
    return (output.squeeze(-1) - 1.0).pow(2).mean()
