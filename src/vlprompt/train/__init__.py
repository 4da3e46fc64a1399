"""The single training loop and its configuration. Predicting and scoring live in eval/, checkpoints in artifacts/."""
from vlprompt.train.callbacks import Callback, TensorBoardCallback
from vlprompt.train.config import TrainConfig
from vlprompt.train.trainer import FitResult, Trainer

__all__ = ["Callback", "FitResult", "TensorBoardCallback", "TrainConfig", "Trainer"]
