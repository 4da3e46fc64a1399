"""The single training loop and its configuration."""
from vlprompt.artifacts.checkpoint import load_prompts, save_prompts
from vlprompt.train.callbacks import Callback, TensorBoardCallback
from vlprompt.train.config import TrainConfig
from vlprompt.train.trainer import FitResult, Trainer, evaluate, predict

__all__ = ["Callback", "FitResult", "TensorBoardCallback", "TrainConfig", "Trainer", "evaluate", "load_prompts",
           "predict", "save_prompts"]
