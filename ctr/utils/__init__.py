"""Seeding, logging and checkpoint I/O."""

from ctr.utils.io import load_checkpoint, save_checkpoint
from ctr.utils.logging import get_logger
from ctr.utils.seeding import seed_everything

__all__ = ["get_logger", "load_checkpoint", "save_checkpoint", "seed_everything"]
