"""A Lightning callback standing for a killed training process (shared by the resume tests)."""

from __future__ import annotations

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """Stands for a killed process: raises when training reaches `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt("killed")
