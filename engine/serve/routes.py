"""The routes. Each checks what only HTTP knows (scopes, the body's shape) and hands the rest to
the engine, whose typed errors the app maps to statuses in one place."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from engine.errors import (
    BadRequestError,
    DocumentNotFoundError,
    LimitError,
    ModelNotFoundError,
)
from engine.index import CorpusIndex, IndexNotFoundError
from engine.index.ingest import DocumentInput, delete_document, put_documents
from engine.index.manager import check_name
from engine.limits import RequestLimits
from engine.serve.auth import require
from engine.serve.schemas import (
    DeleteResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    Health,
    Hit,
    IndexInfo,
    IndexList,
    ModelCard,
    ModelList,
    PutDocumentsRequest,
    PutDocumentsResponse,
    SearchRequest,
    SearchResponse,
    SimilarRequest,
)
from engine.store.factory import is_shared

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse}
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 500, 503)
}
router = APIRouter(responses=ERRORS)
read = Depends(require("read"))
write = Depends(require("write"))
admin = Depends(require("admin"))


def server(request: Request) -> Any:
    return request.app.state.serve


def count(request: Request, **counts: int) -> None:
    """Counts for the audit line; never the texts themselves."""
    request.state.counts = counts


def model_name(request: Request, name: str | None) -> str:
    registry = server(request).engine.registry
    name = name or registry.config.default_model
    if name not in registry.names():
        raise ModelNotFoundError(
            f"no model named '{name}'; GET /v1/models lists them (declare more in the config)"
        )
    return name


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, dependencies=[read])
async def embeddings(body: EmbeddingsRequest, request: Request) -> JSONResponse:
    """OpenAI-compatible: `input` one text or a list; vectors are L2-normalised float32."""
    engine = server(request).engine
    name = model_name(request, body.model)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if body.dimensions is not None:
        model = await engine.embeddings.model(name)
        if body.dimensions != model.dimension:
            raise BadRequestError(
                f"model '{name}' embeds in {model.dimension} dimensions and cannot shorten its "
                f"vectors; leave `dimensions` out or send {model.dimension}"
            )
    result = await engine.embeddings.encode_request(texts, name)
    tokens = int(sum(result.token_counts))
    count(request, inputs=len(texts), tokens=tokens)
    vectors = result.vectors
    if body.encoding_format == "base64":
        rows = vectors.astype("<f4", copy=False)
        data: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in rows]
    else:
        data = vectors.tolist()
    # Built by hand: validating a list of 1,000 x 384 floats through pydantic costs more than
    # the model call for cached texts.
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(data)
            ],
            "model": result.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.get("/v1/models", response_model=ModelList, dependencies=[read])
async def models(request: Request) -> ModelList:
    names = server(request).engine.registry.names()
    return ModelList(data=[ModelCard(id=name) for name in names])


async def open_index(request: Request, name: str) -> CorpusIndex:
    return await server(request).engine.indexes.open(check_name(name))


def hits(found: list[Any]) -> list[Hit]:
    return [Hit(**{**h.to_dict(), "highlights": [list(s) for s in h.highlights]}) for h in found]


@router.post("/v1/search", response_model=SearchResponse, dependencies=[read])
async def search(body: SearchRequest, request: Request) -> SearchResponse:
    """`filters` take the CLI's --filter forms, e.g. ["category=cooking", "date>=2023-01-01"]."""
    if not body.query.strip():
        raise BadRequestError("the query is empty or whitespace; send some words to search for")
    index = await open_index(request, body.index)
    found = await index.search(
        body.query, body.k, filters=body.filters or None, mode=body.mode, per=body.per
    )
    count(request, k=body.k, filters=len(body.filters), results=len(found))
    return SearchResponse(
        index=index.name,
        results=hits(found),
        degraded=found.degraded,
        degraded_reason=found.reason,
    )


@router.post("/v1/similar", response_model=SearchResponse, dependencies=[read])
async def similar(body: SimilarRequest, request: Request) -> SearchResponse:
    """Neighbours of a document (`id` its key) or a chunk (`id` its number), no model call."""
    index = await open_index(request, body.index)
    found = await index.more_like_this(body.id, body.k, filters=body.filters or None, per=body.per)
    count(request, k=body.k, filters=len(body.filters), results=len(found))
    return SearchResponse(index=index.name, results=hits(found))


def info(stats: Any) -> IndexInfo:
    return IndexInfo(**{k: getattr(stats, k) for k in IndexInfo.model_fields})


@router.get("/v1/indexes", response_model=IndexList, dependencies=[read])
async def indexes(request: Request) -> IndexList:
    return IndexList(indexes=[info(s) for s in server(request).engine.indexes.summaries()])


@router.get("/v1/indexes/{name}", response_model=IndexInfo, dependencies=[read])
async def index_info(name: str, request: Request) -> IndexInfo:
    manager = server(request).engine.indexes
    check_name(name)
    for stats in manager.summaries():
        if stats.name == name:
            return info(stats)
    raise IndexNotFoundError(
        f"no index named '{name}'; GET /v1/indexes lists them, PUT documents to create one"
    )


def check_documents(request: Request, body: PutDocumentsRequest) -> None:
    """Documents per request as texts per embed request; each text as a file's size limit."""
    config = server(request).engine.config
    limits = RequestLimits.from_config(config)
    if len(body.documents) > limits.max_embed_texts:
        raise LimitError(
            f"{len(body.documents):,} documents were sent, over the limit of "
            f"{limits.max_embed_texts:,} per request; send them in smaller requests, or raise "
            "limits.max_embed_texts in the config file"
        )
    max_bytes = int(config.documents["max_file_mb"] * 1024 * 1024)
    for i, doc in enumerate(body.documents):
        if len(doc.text.encode()) > max_bytes:
            raise LimitError(
                f"documents[{i}] ('{doc.key}') is over {max_bytes:,} bytes; split it, or raise "
                "documents.max_file_mb in the config file"
            )


@router.put(
    "/v1/indexes/{name}/documents", response_model=PutDocumentsResponse, dependencies=[write]
)
async def put(name: str, body: PutDocumentsRequest, request: Request) -> PutDocumentsResponse:
    """Insert or replace documents by key (the index is made on first use). Unchanged documents
    cost no model call; once this answers, the documents are committed."""
    check_name(name)
    check_documents(request, body)
    manager = server(request).engine.indexes
    model = model_name(request, body.model) if body.model else None
    index = await manager.open_or_create(name, model)
    docs = [DocumentInput(d.key, d.text, d.title, d.metadata) for d in body.documents]
    report = await put_documents(index, docs)
    stats = index.stats()
    count(request, documents=len(docs), chunks=report.chunks_embedded)
    return PutDocumentsResponse(
        index=name, documents=stats.documents, chunks=stats.chunks, **report.to_dict()
    )


@router.delete(
    "/v1/indexes/{name}/documents/{key:path}", response_model=DeleteResponse, dependencies=[write]
)
async def delete(name: str, key: str, request: Request) -> DeleteResponse:
    index = await open_index(request, name)
    if not await delete_document(index, key):
        raise DocumentNotFoundError(f"no document '{key}' in index '{name}'")
    count(request, documents=1)
    return DeleteResponse(index=name, key=key, deleted=True)


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """Alive: the process answers."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request, response: Response) -> Health:
    """Ready: the engine is started, the default model loaded, every named index open, and the
    vector server of each named index that keeps its vectors on one (Milvus) answering."""
    state = server(request)
    reasons = [] if state.ready else ["starting or stopping"]
    engine = state.engine
    if engine.registry.created(engine.config.default_model) is None:
        reasons.append(f"model '{engine.config.default_model}' is not loaded")
    for name in state.options.indexes:
        try:
            index = await engine.indexes.open(name)
            if is_shared(index.backend):
                await asyncio.to_thread(getattr, index.vectors, "count")
        except Exception as exc:  # readiness reports every failure, whatever its kind
            reasons.append(f"index '{name}': {exc}")
    if reasons:
        response.status_code = 503
    return Health(status="not ready" if reasons else "ready", reasons=reasons)


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[admin])
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text: requests and latencies per route and status, then embedding metrics."""
    return PlainTextResponse(server(request).metrics.text())
