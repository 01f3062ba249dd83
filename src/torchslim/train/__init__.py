"""Recovery after compression: batch-norm recalibration (fine-tuning with distillation follows)."""

from torchslim.train._bn import recalibrate_bn

__all__ = ["recalibrate_bn"]
