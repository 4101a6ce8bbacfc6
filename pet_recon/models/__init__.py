"""Neural networks: the conditional diffusion U-Net."""

from pet_recon.models.unet import UNet

__all__ = ["UNet"]
