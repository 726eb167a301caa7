"""embedscope's engine: usable without any UI, and importable without loading torch or faiss."""

from engine.config import Config, ConfigError, load_config
from engine.engine import Engine

__all__ = ["Config", "ConfigError", "Engine", "load_config"]
