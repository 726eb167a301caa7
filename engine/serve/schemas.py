"""Request and response bodies; FastAPI turns them into the OpenAPI schema at /openapi.json.

The embeddings and models bodies follow OpenAI's, so its client works unchanged. Bounds a caller
controls (k, texts, characters) are checked by the engine's own limits, not here, so every front
end refuses the same request with the same message.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
KEY_MAX = 1024


class ErrorDetail(BaseModel):
    code: str = Field(description="stable; clients branch on it, never on the message")
    message: str = Field(description="what is wrong and how to fix it")
    type: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class EmbeddingsRequest(BaseModel):
    input: str | list[str] = Field(description="one text, or a list of texts")
    model: str | None = Field(default=None, description="a model name; default: default_model")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(
        default=None, ge=1, description="only the model's own dimension is accepted"
    )
    user: str | None = None


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "embedscope"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: str
    query: str = Field(min_length=1)
    k: int = 10
    mode: Literal["vector", "keyword", "hybrid"] = "hybrid"
    filters: list[str] = Field(default_factory=list, description="the CLI's --filter forms")
    per: Literal["document", "chunk"] = "document"


class SimilarRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: str
    id: str | int = Field(description="a document key, or a chunk id")
    k: int = 10
    filters: list[str] = Field(default_factory=list)
    per: Literal["document", "chunk"] = "document"


class Hit(BaseModel):
    rank: int
    score: float
    chunk_id: int
    doc_key: str
    title: str
    path: str
    snippet: str
    highlights: list[list[int]]
    text: str
    page: int | None
    metadata: dict[str, Any]
    matched_chunks: int


class SearchResponse(BaseModel):
    index: str
    results: list[Hit]
    degraded: str | None = None
    degraded_reason: str | None = None


class IndexInfo(BaseModel):
    name: str
    model: str
    dimension: int
    index_type: str
    documents: int
    chunks: int
    bytes_on_disk: int
    last_indexed: float | None


class IndexList(BaseModel):
    indexes: list[IndexInfo]


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=KEY_MAX)
    text: str = Field(min_length=1)
    title: str = ""
    metadata: dict[str, Any] = Field(default_factory=dict)


class PutDocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    documents: list[DocumentIn] = Field(min_length=1)
    model: str | None = Field(default=None, description="model of a new index")


class PutDocumentsResponse(BaseModel):
    index: str
    added: int
    updated: int
    unchanged: int
    chunks_embedded: int
    documents: int
    chunks: int


class DeleteResponse(BaseModel):
    index: str
    key: str
    deleted: bool


class Health(BaseModel):
    status: str
    reasons: list[str] = Field(default_factory=list)
