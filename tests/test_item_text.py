"""The version's text model (inference/item_text.py, fitted by training/export/text_model.py)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from graphprompt.tokenizer import RecTokenizer
from inference.item_text import TEXT_MODEL_FILE, TextVectoriser, item_text
from training.export.text_model import fit_text_model

BRANDS = ["acme", "zenith", "orbit", "lumen", "nova", "pixel", "quartz", "terra"]


def _catalogue(n_per_brand: int = 12):
    """Items whose text names their brand; users buy within one brand, so brand = collaborative cluster."""
    texts, clusters = [], []
    for c, b in enumerate(BRANDS):
        for k in range(n_per_brand):
            texts.append(item_text({"title": f"{b} widget model {k}", "brand": b, "categories": f"{b} gear"}))
            clusters.append(c)
    return texts, np.array(clusters)


def _setup(seed: int = 0):
    texts, clusters = _catalogue()
    rng = np.random.default_rng(seed)
    d = 16
    centres = rng.normal(size=(len(BRANDS), d))
    vectors = (centres[clusters] + 0.1 * rng.normal(size=(len(texts), d))).astype(np.float32)
    rows, cols = [], []
    for u in range(200):
        c = u % len(BRANDS)
        items = rng.choice(np.flatnonzero(clusters == c), size=5, replace=False)
        rows += [u] * 5
        cols += items.tolist()
    train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(200, len(texts)))
    tok = RecTokenizer.train(texts, n_users=200, n_items=len(texts), vocab_size=300, min_frequency=1)
    word_emb = rng.normal(size=(tok.n_words, 8)).astype(np.float32)
    return tok, word_emb, texts, vectors, train, clusters, centres


def test_item_text_joins_the_known_fields_in_order() -> None:
    assert item_text({"brand": "B", "title": " T ", "price": "3", "description": None}) == "T ; B"
    assert item_text({}) == ""


def test_new_item_text_lands_in_its_cluster_and_names_a_similar_item(tmp_path) -> None:
    tok, word_emb, texts, vectors, train, clusters, centres = _setup()
    model, report = fit_text_model(tok, word_emb, texts, vectors, train)
    assert model is not None and report["valid_items"] > 0
    assert report["valid_recall@20"] >= report["valid_recall@20_projection_only"] - 1e-9
    new = model.vectors([item_text({"title": "zenith widget model 99", "brand": "zenith"})])
    assert clusters[new.nearest[0]] == BRANDS.index("zenith")
    assert 0 < new.similarity[0] <= 1.0 + 1e-6
    # the vector scores highest against its own cluster's centre
    assert int(np.argmax(centres @ new.vectors[0])) == BRANDS.index("zenith")

    np.save(tmp_path / "item_embeddings.npy", vectors)
    tok.save(tmp_path)
    model.save(tmp_path)
    assert (tmp_path / TEXT_MODEL_FILE).is_dir()
    loaded = TextVectoriser.load(tmp_path, tok)
    again = loaded.vectors([item_text({"title": "zenith widget model 99", "brand": "zenith"})])
    np.testing.assert_allclose(again.vectors, new.vectors, rtol=1e-6, atol=1e-6)
    assert again.nearest.tolist() == new.nearest.tolist()


def test_text_with_no_known_word_piece_has_no_nearest_item() -> None:
    tok, word_emb, texts, vectors, train, *_ = _setup()
    model, _ = fit_text_model(tok, word_emb, texts, vectors, train)
    out = model.vectors([""])
    assert out.nearest.tolist() == [-1] and out.similarity.tolist() == [0.0]
    assert np.all(out.vectors == 0)


def test_data_without_text_gets_no_text_model(tmp_path) -> None:
    tok, word_emb, texts, vectors, train, *_ = _setup()
    model, report = fit_text_model(tok, word_emb, [""] * len(texts), vectors, train)
    assert model is None and "skipped" in report
    assert TextVectoriser.load(tmp_path) is None


def test_new_item_history_affinity_favours_the_text_of_the_users_own_items(tmp_path) -> None:
    """The affinity term: cosine of the user's history profile with the item's text, scaled like a score."""
    tok, word_emb, texts, vectors, train, clusters, _ = _setup()
    model, report = fit_text_model(tok, word_emb, texts, vectors, train)
    assert report["chosen"]["beta"] in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    assert report["valid_recall@20"] >= report["valid_recall@20_vector_only"] - 1e-9
    new = model.vectors([item_text({"title": f"{b} widget model 99", "brand": b}) for b in BRANDS])
    assert new.bags.shape == (len(BRANDS), tok.n_words)
    model.beta = 1.0
    acme, orbit = np.flatnonzero(clusters == 0)[:3], np.flatnonzero(clusters == 2)[:3]
    users = np.ones((2, vectors.shape[1]), dtype=np.float32)
    users[1] *= 3  # three times the length: three times the term
    aff = model.affinity(users, [acme, orbit], new.bags)
    assert aff.shape == (2, len(BRANDS))
    assert int(np.argmax(aff[0])) == 0 and int(np.argmax(aff[1])) == 2
    np.testing.assert_allclose(model.affinity(users[:1] * 3, [acme], new.bags), 3 * aff[:1], rtol=1e-5)
    assert (aff >= 0).all() and aff[0, 0] <= model.item_scale * np.linalg.norm(users[0]) + 1e-5
    # an empty history, or ids outside the version, add nothing
    none = model.affinity(users[:1], [np.array([-1, 10**6])], new.bags)
    assert np.all(none == 0)
    model.beta = 0.0
    assert model.affinity(users, [acme, orbit], new.bags) is None

    # beta travels with the version; a text model saved before beta existed loads with 0
    model.beta = 2.0
    np.save(tmp_path / "item_embeddings.npy", vectors)
    tok.save(tmp_path)
    model.save(tmp_path)
    assert TextVectoriser.load(tmp_path, tok).beta == 2.0
    params = tmp_path / TEXT_MODEL_FILE / "params.json"
    params.write_text(params.read_text().replace(', "beta": 2.0', ""))
    assert TextVectoriser.load(tmp_path, tok).beta == 0.0


def test_stack_rows_equals_vstack() -> None:
    from inference.item_text import stack_rows

    rng = np.random.default_rng(3)
    rows = [
        sp.random(1, 50, density=d, format="csr", dtype=np.float32, random_state=rng) for d in (0, 0.1, 0.5)
    ]
    got = stack_rows(rows, 50)
    assert got.shape == (3, 50)
    np.testing.assert_array_equal(got.toarray(), sp.vstack(rows).toarray())
    assert stack_rows([], 50).shape == (0, 50)
