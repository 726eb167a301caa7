"""embedscope's engine: usable without any UI, and importable without loading torch or faiss."""

import os

# torch, faiss and numpy each bring an OpenMP pool; with the default spin-wait policy they burn
# the cores they share (measured on 2 cores under load: single-text encodes 8x slower). Passive
# waiting must be chosen before any of them loads, so it is set here, unless the user chose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from engine.config import Config, ConfigError, load_config
from engine.engine import Engine

__all__ = ["Config", "ConfigError", "Engine", "load_config"]
