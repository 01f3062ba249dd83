"""Recovery after compression: batch-norm recalibration, and fine-tuning with distillation."""

from torchslim.train._bn import recalibrate_bn
from torchslim.train._finetune import EpochRecord, FinetuneConfig, FinetuneResult, finetune

__all__ = ["recalibrate_bn", "finetune", "FinetuneConfig", "FinetuneResult", "EpochRecord"]
