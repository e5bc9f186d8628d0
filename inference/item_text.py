"""New items from their text: the version's text model, which maps an item's text into the item space.

A product added to the catalogue after training has no item token, so the encoder cannot name it and FAISS
does not hold it. Its vector comes from what the model learned about words in content pre-training (DESIGN §1:
item ``i`` is described as ``<text>``, so the word table is trained to line up with item tokens):

* **projection** — the item's text as the idf-weighted mean of the model's word embeddings, mapped into the
  item space by a ridge regression fitted at export on the items the model knows (``proj = word_emb @ A``);
* **neighbours** — the collaborative vectors of the known items whose text (idf-weighted bag of the model's
  word pieces) is most similar, softmax-weighted by that similarity.

The vector is ``alpha * projection + (1 - alpha) * neighbours``. New items are ranked by ``user_vector @ v``
plus their **history affinity** (and merged with the known items by their vector scores alone:
``inference.side_index``), the text counterpart of the candidate prior that known items get from the
graph: ``beta * |user_vector| * c * cos(profile, bag)``, where ``profile`` is the sum of the bags of the
user's history items and ``c`` the mean norm of the version's item vectors (so the term scales with the
user vector like the dot product does, and one ``beta`` fits every user). ``alpha``, ``beta``, the ridge
strength, the neighbour count and the softmax temperature are chosen at export on items held out of the
fit (``training/export/text_model.py``); a version exported before ``beta`` existed has ``beta = 0``. A new
item joins the exact top-k without a rebuild. ``nearest`` (the most similar known item) stands in for a new
item in a prompt and names a reason ("similar text to ...").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from graphprompt.tokenizer import RecTokenizer

TEXT_MODEL_FILE = "item_text"  # a folder of .npy arrays + params.json (the store never keeps .npz)
TEXT_FIELDS = ("title", "brand", "categories", "description")
MAX_TEXT_TOKENS = 256  # word pieces per item text: a title + brand + categories fits; essays are cut


def item_text(fields: Mapping[str, str | None]) -> str:
    """One text from an item's fields (the same join at export and in the service)."""
    return " ; ".join(str(fields[f]).strip() for f in TEXT_FIELDS if fields.get(f) and str(fields[f]).strip())


@dataclass
class TextVectors:
    vectors: np.ndarray  # float32 [n, D] in the item-embedding space
    nearest: np.ndarray  # int64 [n] most text-similar known item (-1: the text shares no word piece with any)
    similarity: np.ndarray  # float32 [n] cosine similarity of the bags of word pieces to ``nearest``
    bags: sp.csr_matrix  # [n, words] the texts' L2-normalised tf-idf bags (for the history affinity)


def bag_of_pieces(token_lists: Sequence[np.ndarray], idf: np.ndarray) -> sp.csr_matrix:
    """Rows = texts: tf-idf weights of the word pieces, L2-normalised (all-zero rows stay zero)."""
    n_words = len(idf)
    rows = np.repeat(np.arange(len(token_lists)), [len(t) for t in token_lists])
    cols = np.concatenate(token_lists) if token_lists else np.zeros(0, dtype=np.int64)
    bag = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(len(token_lists), n_words))
    bag.sum_duplicates()
    return l2_rows(bag.multiply(idf[None, :]).tocsr().astype(np.float32))


def stack_rows(rows: Sequence[sp.csr_matrix], n_cols: int) -> sp.csr_matrix:
    """One CSR matrix of single-row CSR matrices, from their arrays (``sp.vstack`` goes through COO and
    costs ~9 ms for a thousand rows: a catalogue write rebuilds this)."""
    lengths = np.fromiter((r.nnz for r in rows), dtype=np.int64, count=len(rows))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    data = np.concatenate([r.data for r in rows]) if rows else np.zeros(0, np.float32)
    indices = np.concatenate([r.indices for r in rows]) if rows else np.zeros(0, np.int32)
    return sp.csr_matrix((data, indices, indptr), shape=(len(rows), n_cols))


def l2_rows(m: sp.spmatrix) -> sp.csr_matrix:
    """``m`` with each row scaled to unit length (all-zero rows stay zero)."""
    m = sp.csr_matrix(m, dtype=np.float32)
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
    return (sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)) @ m).tocsr()


def tokenize(tok: RecTokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    return [ids[:MAX_TEXT_TOKENS] for ids in tok.encode_texts(list(texts))] if texts else []


class TextVectoriser:
    """A version's text model (``item_text.npz`` + its tokenizer and item embeddings)."""

    def __init__(
        self,
        tok: RecTokenizer,
        proj: np.ndarray,
        bias: np.ndarray,
        idf: np.ndarray,
        known_bag: sp.csr_matrix,
        item_vectors: np.ndarray,
        *,
        alpha: float,
        k: int,
        tau: float,
        beta: float = 0.0,
    ) -> None:
        if proj.shape[0] != len(idf) or known_bag.shape != (len(item_vectors), len(idf)):
            raise ValueError(
                f"text model does not fit its version: proj {proj.shape}, idf {idf.shape}, "
                f"known bag {known_bag.shape}, item vectors {item_vectors.shape}"
            )
        self.tok = tok
        self.proj, self.bias, self.idf = proj, bias, idf
        self.known_bag = known_bag.tocsr()  # [items, words]: a history's profile is a sum of its rows
        self.known_bag_t = known_bag.T.tocsr()  # [words, items]: a text's similarities in one product
        self.item_vectors = item_vectors
        self.alpha, self.k, self.tau, self.beta = float(alpha), int(k), float(tau), float(beta)
        # the typical item vector's length: the affinity term is in the units of a user·item score
        self.item_scale = (
            float(np.linalg.norm(np.asarray(item_vectors), axis=1).mean()) if len(item_vectors) else 0.0
        )
        self.dim = int(proj.shape[1])

    # -- persistence ---------------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        bag = self.known_bag
        return {
            "proj": self.proj,
            "bias": self.bias,
            "idf": self.idf,
            "bag_data": bag.data,
            "bag_indices": bag.indices,
            "bag_indptr": bag.indptr,
        }

    def save(self, folder: str | Path) -> None:
        out = Path(folder) / TEXT_MODEL_FILE
        out.mkdir(parents=True, exist_ok=True)
        for name, arr in self.arrays().items():
            np.save(out / f"{name}.npy", np.ascontiguousarray(arr))
        params = {"alpha": self.alpha, "k": self.k, "tau": self.tau, "beta": self.beta}
        (out / "params.json").write_text(json.dumps(params))

    @classmethod
    def load(cls, folder: str | Path, tok: RecTokenizer | None = None) -> TextVectoriser | None:
        """The version's text model, or None when it has none (older versions; data without item text)."""
        folder = Path(folder)
        src = folder / TEXT_MODEL_FILE
        if not src.is_dir():
            return None
        tok = tok or RecTokenizer.load(folder)
        item_vectors = np.load(folder / "item_embeddings.npy", mmap_mode="r")

        def arr(name: str) -> np.ndarray:
            return np.load(src / f"{name}.npy", allow_pickle=False)

        idf = arr("idf").astype(np.float32)
        bag = sp.csr_matrix(
            (arr("bag_data"), arr("bag_indices"), arr("bag_indptr")), shape=(len(item_vectors), len(idf))
        )
        params = json.loads((src / "params.json").read_text())
        return cls(
            tok, arr("proj").astype(np.float32), arr("bias").astype(np.float32), idf, bag, item_vectors,
            alpha=params["alpha"], k=int(params["k"]), tau=params["tau"], beta=params.get("beta", 0.0),
        )  # fmt: skip

    # -- text → vector -------------------------------------------------------------------------------------

    def vectors(self, texts: Sequence[str]) -> TextVectors:
        return self.vectors_of_tokens(tokenize(self.tok, texts))

    def vectors_of_tokens(self, token_lists: Sequence[np.ndarray]) -> TextVectors:
        bag = bag_of_pieces(token_lists, self.idf)
        projection = self.projection(bag)
        sims = np.asarray((bag @ self.known_bag_t).todense(), dtype=np.float32)  # [n, known items]
        neighbours, nearest, best = self.neighbours(sims)
        # a text sharing no word piece with any known item has no neighbours: the projection alone speaks
        alpha = np.where(nearest >= 0, self.alpha, 1.0).astype(np.float32)[:, None]
        vectors = (alpha * projection + (1 - alpha) * neighbours).astype(np.float32)
        return TextVectors(vectors, nearest, best, bag)

    # -- the history affinity ------------------------------------------------------------------------------

    def profiles(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """Rows = users: the L2-normalised sum of their history items' bags (known item indices)."""
        n = self.known_bag.shape[0]
        rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories])
        cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else rows
        keep = (cols >= 0) & (cols < n)
        pick = sp.csr_matrix(
            (np.ones(int(keep.sum()), np.float32), (rows[keep], cols[keep])), shape=(len(histories), n)
        )
        prof = (pick @ self.known_bag).tocsr()
        norms = np.sqrt(np.asarray(prof.multiply(prof).sum(axis=1)).ravel())
        return (
            sp.diags(np.where(norms > 0, 1.0 / np.maximum(norms, 1e-12), 0.0).astype(np.float32)) @ prof
        ).tocsr()

    def similarity_to(self, bags: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
        """[n, len(items)] cosine similarity of each of ``bags``' texts with each known item's text."""
        items = np.asarray(items, dtype=np.int64)
        items = np.where((items >= 0) & (items < self.known_bag.shape[0]), items, -1)
        out = np.asarray((bags @ self.known_bag[np.maximum(items, 0)].T).todense(), dtype=np.float32)
        out[:, items < 0] = 0.0
        return out

    def affinity(
        self, user_vectors: np.ndarray, histories: Sequence[np.ndarray], bags: sp.csr_matrix
    ) -> np.ndarray | None:
        """[B, n] the history-affinity term of ``bags``' items for each user (None when ``beta`` is 0)."""
        if self.beta == 0.0 or bags.shape[0] == 0:
            return None
        cos = np.asarray((self.profiles(histories) @ bags.T).todense(), dtype=np.float32)
        scale = self.beta * self.item_scale * np.linalg.norm(np.asarray(user_vectors, np.float32), axis=1)
        return (scale[:, None] * cos).astype(np.float32)

    def projection(self, bag: sp.csr_matrix) -> np.ndarray:
        """Ridge map of the tf-idf-weighted mean word embedding (rows of ``bag`` need not be normalised)."""
        weights = np.asarray(bag.sum(axis=1), dtype=np.float32)
        mean = np.asarray(bag @ self.proj, dtype=np.float32) / np.maximum(weights, 1e-12)
        return np.where(weights > 0, mean + self.bias, 0.0).astype(np.float32)

    def neighbours(self, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(softmax-weighted vectors of the top-k most similar known items, nearest item, its similarity)."""
        n = len(sims)
        k = min(self.k, sims.shape[1])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, top, axis=1)
        w = np.exp((s - s.max(axis=1, keepdims=True)) / self.tau) * (s > 0)
        w = w / np.maximum(w.sum(axis=1, keepdims=True), 1e-12)
        out = np.einsum("nk,nkd->nd", w, np.asarray(self.item_vectors)[top]).astype(np.float32)
        best_col = np.argmax(s, axis=1)
        best = s[np.arange(n), best_col].astype(np.float32)
        nearest = np.where(best > 0, top[np.arange(n), best_col], -1).astype(np.int64)
        return out, nearest, np.maximum(best, 0.0)
