"""The engine: one object that owns the registry, the embedding service and the indexes."""

from __future__ import annotations

from pathlib import Path

from engine.config import Config, load_config
from engine.embedding import EmbeddingService
from engine.index import IndexManager
from engine.models import ModelRegistry


class Engine:
    """`async with Engine(config) as engine:` starts threads and caches once and stops them once."""

    def __init__(self, config: Config | None = None, *, config_path: Path | None = None) -> None:
        self.config = config if config is not None else load_config(config_path)
        self.data_dir = self.config.data_dir
        self.registry = ModelRegistry(self.config)
        self.embeddings = EmbeddingService(
            self.registry, self.config.embedding, self.data_dir / "cache" / "embeddings"
        )
        self.indexes = IndexManager(self.config, self.embeddings)

    async def start(self) -> Engine:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self.embeddings.start()
        return self

    async def stop(self) -> None:
        self.indexes.close()
        await self.embeddings.stop()

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
