"""Small helpers shared by the command-line entry points (train, evaluate, search)."""
from relnas.utils.instantiate import instantiate_callbacks, instantiate_loggers
from relnas.utils.logging import configure_wandb_mode
from relnas.utils.run_info import hardware_info

__all__ = ["instantiate_callbacks", "instantiate_loggers", "configure_wandb_mode", "hardware_info"]
