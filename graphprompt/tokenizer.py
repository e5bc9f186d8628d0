"""One token id space for words and graph nodes (ARCHITECTURE §3).

Layout: ``[0, V_words)`` word pieces, then ``V_words + u`` for ``user_<u>``, then ``V_words + U + i`` for
``item_<i>``. Word pieces come either from GPT-2's byte-level BPE (a local Hugging Face GPT-2 folder, so its
pretrained
word embeddings line up) or from a small byte-level BPE trained with ``tokenizers`` on the dataset's item
text. User and
item tokens are atomic: they never go through the BPE, so ``node id = token id - V_words`` for every id
token, which is
exactly the graph's global node id (users ``0..U-1``, items ``U..U+I-1``).

Only the word tokenizer is stored in ``tokenizer.json``; the id-token counts travel in ``prompt_config.json``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

_ID_TOKEN = re.compile(r"(user|item)_(\d+)")


class RecTokenizer:
    """Words (a ``tokenizers.Tokenizer``) plus ``n_users`` user tokens and ``n_items`` item tokens."""

    def __init__(self, words: Tokenizer, n_users: int, n_items: int, source: str = "trained"):
        if n_users < 0 or n_items < 1:
            raise ValueError(f"need n_users >= 0 and n_items >= 1, got {n_users}, {n_items}")
        self.words = words
        self.n_words = int(words.get_vocab_size(with_added_tokens=True))
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.source = source
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ id layout
    @property
    def vocab_size(self) -> int:
        return self.n_words + self.n_users + self.n_items

    @property
    def user_offset(self) -> int:
        return self.n_words

    @property
    def item_offset(self) -> int:
        return self.n_words + self.n_users

    def user_token(self, u: int | np.ndarray) -> int | np.ndarray:
        return self.n_words + u

    def item_token(self, i: int | np.ndarray) -> int | np.ndarray:
        return self.n_words + self.n_users + i

    def node_ids(self, token_ids: np.ndarray) -> np.ndarray:
        """Per position the global graph node id (users first, then items), -1 for word tokens."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        return np.where(token_ids >= self.n_words, token_ids - self.n_words, -1)

    # ------------------------------------------------------------------ text
    def encode_text(self, text: str, cache: bool = False) -> np.ndarray:
        """Word-piece ids of ``text`` (int64). ``cache=True`` memoises fixed template strings (the hot
        path)."""
        if cache:
            hit = self._cache.get(text)
            if hit is None:
                hit = np.asarray(self.words.encode(text, add_special_tokens=False).ids, dtype=np.int64)
                hit.setflags(write=False)
                self._cache[text] = hit
            return hit
        return np.asarray(self.words.encode(text, add_special_tokens=False).ids, dtype=np.int64)

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Batch form of :meth:`encode_text` (the Rust tokenizer parallelises it)."""
        encs = self.words.encode_batch(texts, add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encs]

    def encode(self, text: str) -> np.ndarray:
        """Encode a string in which ``user_<u>`` / ``item_<i>`` appear literally (tests, debugging, the
        CLI)."""
        out: list[np.ndarray] = []
        pos = 0
        for m in _ID_TOKEN.finditer(text):
            before = text[pos : m.start()]
            if before.endswith(" "):  # the space before an id token belongs to the atomic token
                before = before[:-1]
            if before:
                out.append(self.encode_text(before))
            kind, idx = m.group(1), int(m.group(2))
            limit = self.n_users if kind == "user" else self.n_items
            if idx >= limit:
                raise ValueError(f"{m.group(0)} is out of range: the tokenizer has {limit} {kind}s")
            out.append(np.array([self.user_token(idx) if kind == "user" else self.item_token(idx)]))
            pos = m.end()
        if pos < len(text):
            out.append(self.encode_text(text[pos:]))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        """Readable text; id tokens print as `` user_<u>`` / `` item_<i>`` (with the space they imply)."""
        ids_list = [int(t) for t in ids]
        parts: list[str] = []
        run: list[int] = []
        for t in ids_list:
            t = int(t)
            if t < self.n_words:
                run.append(t)
                continue
            if run:
                parts.append(self.words.decode(run))
                run = []
            if t < self.item_offset:
                parts.append(f" user_{t - self.user_offset}")
            elif t < self.vocab_size:
                parts.append(f" item_{t - self.item_offset}")
            else:
                raise ValueError(f"token id {t} is outside the vocabulary of {self.vocab_size}")
        if run:
            parts.append(self.words.decode(run))
        text = "".join(parts)
        first = next(iter(ids_list), None)
        # an id token at the very start has no space before it in the original text
        return text[1:] if first is not None and first >= self.n_words else text

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def train(
        cls, texts: Iterable[str], n_users: int, n_items: int, vocab_size: int = 6000, min_frequency: int = 2
    ) -> RecTokenizer:
        """Train a byte-level BPE on ``texts`` (the dataset's item text). Deterministic for the same input."""
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((t for t in texts if t), trainer=trainer)
        return cls(tok, n_users, n_items, source="trained")

    @classmethod
    def from_gpt2(cls, folder: str | Path, n_users: int, n_items: int) -> RecTokenizer:
        """GPT-2's own BPE from a local Hugging Face folder (``tokenizer.json`` or ``vocab.json`` +
        ``merges.txt``)."""
        folder = Path(folder)
        if (folder / "tokenizer.json").exists():
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
            tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
        else:
            raise FileNotFoundError(
                f"{folder} holds no GPT-2 tokenizer (tokenizer.json or vocab.json + merges.txt)"
            )
        tok.no_padding()
        tok.no_truncation()
        return cls(tok, n_users, n_items, source=f"gpt2:{folder.name}")

    def counts(self) -> dict:
        return {
            "n_words": self.n_words,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "source": self.source,
        }

    def save(self, folder: str | Path) -> dict:
        """Write ``tokenizer.json``; returns the counts that belong in ``prompt_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.words.save(str(folder / "tokenizer.json"))
        return self.counts()

    @classmethod
    def load(cls, folder: str | Path, counts: dict | None = None) -> RecTokenizer:
        """Load ``tokenizer.json``; counts from the argument or from ``prompt_config.json`` next to it."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.exists():
            raise FileNotFoundError(f"no tokenizer.json in {folder}")
        if counts is None:
            pc = folder / "prompt_config.json"
            if not pc.exists():
                raise FileNotFoundError(f"{folder}: id-token counts not given and no prompt_config.json")
            counts = json.loads(pc.read_text())["tokenizer"]
        tok = cls(
            Tokenizer.from_file(str(path)), counts["n_users"], counts["n_items"], counts.get("source", "")
        )
        if tok.n_words != counts["n_words"]:
            raise ValueError(f"{path}: {tok.n_words} word tokens, but the config says {counts['n_words']}")
        return tok


def item_corpus(item_text: dict[str, list[str]], reviews: dict | None = None) -> list[str]:
    """The texts a dataset tokenizer is trained on: every item field (and reviews when present)."""
    out = [t for values in item_text.values() for t in values if t]
    if reviews:
        out.extend(t for t in reviews.values() if t)
    return out
