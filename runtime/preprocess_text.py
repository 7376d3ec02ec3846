"""Text preprocessing: str -> token ids and attention mask, with the bundle's tokenizer.json.

Only the first ``max_length * TEXT_CHARS_PER_TOKEN`` characters of a raw string are tokenised:
the rest could only be truncated away, and tokenising it costs time linear in its length (10 M
characters took 21-67 s). A token covers at least one character, so the cap changes the ids only
for text averaging more than TEXT_CHARS_PER_TOKEN characters per token (e.g. long runs of spaces).
"""
from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtime.preprocess_base import PreprocessError, all_real_mask, need, pad_mode, pos_int

TEXT_CHARS_PER_TOKEN = 32
_TOKENIZERS: dict[tuple[str, int], Any] = {}
_TOKENIZER_LOCK = threading.Lock()


def _load_tokenizer(path: Path, max_length: int) -> tuple[Any, int]:
    """One configured Tokenizer per (file, max_length), shared and never mutated afterwards."""
    from tokenizers import Tokenizer

    key = (str(path), max_length)
    with _TOKENIZER_LOCK:
        if key not in _TOKENIZERS:
            if not path.is_file():
                raise PreprocessError("spec", f"tokenizer file {path} does not exist")
            tok = Tokenizer.from_file(str(path))
            pad = tok.padding
            pad_id = pad["pad_id"] if pad else next(
                (i for t in ("[PAD]", "<pad>") if (i := tok.token_to_id(t)) is not None), 0)
            tok.no_padding()  # we pad in numpy, to the batch's longest
            tok.enable_truncation(max_length)
            _TOKENIZERS[key] = (tok, int(pad_id))
        return _TOKENIZERS[key]


def _pad_id(spec: dict[str, Any], vocab_size: int) -> int:
    value = spec["pad_id"]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise PreprocessError("spec", f"text spec 'pad_id' must be a token id in [0, {vocab_size}) of its tokenizer, "
                                      f"got {value!r}")
    return int(value)


class TextPreprocessor:
    input_names: tuple[str, ...] = ("input_ids", "attention_mask")

    def __init__(self, spec: dict[str, Any], base_dir: Path | None = None) -> None:
        self.spec = spec
        path = Path(need(spec, "tokenizer_file"))
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        self.max_length = pos_int(spec, "max_length")
        self.pad_fixed = pad_mode(spec, "max_length")
        self.path = path.resolve()
        self.tokenizer, self.pad_id = _load_tokenizer(self.path, self.max_length)
        if "pad_id" in spec:  # the model's own pad token (SigLIP: </s>) wins over what the tokenizer file implies
            self.pad_id = _pad_id(spec, int(self.tokenizer.get_vocab_size()))
        self.max_chars = self.max_length * TEXT_CHARS_PER_TOKEN
        self._masks: dict[int, np.ndarray] = {}

    def __reduce__(self) -> tuple[Any, ...]:
        # DataLoader workers rebuild from the spec (and this process-wide cache), not a copied tokenizer
        return (TextPreprocessor, ({**self.spec, "tokenizer_file": str(self.path)},))

    def _check(self, raw: Any, index: int | None) -> str:
        if raw is None:
            raise PreprocessError("missing", "text is None; drop missing modalities before preprocessing", index)
        if not isinstance(raw, str):
            raise PreprocessError("type", f"text must be str, got {type(raw).__name__}", index)
        return raw if len(raw) <= self.max_chars else raw[: self.max_chars]

    def features(self, raw: Any, index: int | None = None) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(self._check(raw, index)).ids, dtype=np.int64)

    def __call__(self, raws: Sequence[Any]) -> dict[str, np.ndarray]:
        if len(raws) == 0:
            raise PreprocessError("empty", "empty batch")
        texts = [self._check(r, i) for i, r in enumerate(raws)]
        if len(texts) == 1 and not self.pad_fixed:  # streaming: encode_batch's thread-pool hand-off costs more
            ids = self.tokenizer.encode(texts[0]).ids
            return {"input_ids": np.array([ids], dtype=np.int64), "attention_mask": all_real_mask(self._masks, len(ids))}
        encs = self.tokenizer.encode_batch(texts)
        t = self.max_length if self.pad_fixed else max(len(e.ids) for e in encs)
        ids = np.full((len(encs), t), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), t), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return {"input_ids": ids, "attention_mask": mask}

