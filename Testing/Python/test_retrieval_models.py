"""Retrieval models on tiny synthetic images: training, encoders, files, shallow hashing."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from DeepSimilarityLib.errors import InputError
from DeepSimilarityLib.retrieval import retrieval_metrics as m
from DeepSimilarityLib.retrieval.encoder import Encoder, unpack_bits
from DeepSimilarityLib.retrieval.hashing import HashSettings, hash_codes, train_hashing
from DeepSimilarityLib.retrieval.models_io import as_encoder, load_model, load_retrieval_model, save_model
from DeepSimilarityLib.retrieval.report import siamese_table
from DeepSimilarityLib.retrieval.shallow_hashing import ITQ, PCA, SpectralHashing
from DeepSimilarityLib.retrieval.siamese import (EmbeddingNet, SiameseSettings, model_config, partners, train_classifier,
                                                 train_siamese)

torch.set_num_threads(1)
ARCH = dict(depth=10, width=4, stem_stride=1)


def toy_set(n=48, size=16, seed=0):
    """Class 0: bright top half; class 1: bright bottom half; plus noise. Labels also multi-hot."""
    rng = np.random.default_rng(seed)
    classes = np.arange(n) % 2
    images = rng.uniform(0, 0.3, (n, size, size)).astype(np.float32)
    for i, c in enumerate(classes):
        rows = slice(0, size // 2) if c == 0 else slice(size // 2, size)
        images[i, rows] += 0.6
    labels = np.stack([classes == 0, classes == 1, np.arange(n) % 3 == 0], 1).astype(np.uint8)
    return images, classes, labels


def test_partners_are_balanced_and_labelled_right():
    classes = np.array([0, 0, 0, 1, 1, 2])
    rng = np.random.default_rng(0)
    anchors = np.repeat(np.arange(6), 50)
    j, same = partners(classes, anchors, rng)
    assert np.array_equal(same, classes[j] == classes[anchors])
    assert not np.any((j == anchors) & (classes[anchors] != 2))  # never the anchor itself when another exists
    assert 0.35 < same.mean() < 0.65


def test_embeddings_have_unit_length_unless_the_config_predates_it():
    x = torch.rand(3, 1, 16, 16)
    config = model_config("siamese", (16, 16), 2, **ARCH, embedding_dim=8)
    assert config["normalise"]
    torch.manual_seed(0)
    net = EmbeddingNet(config).eval()
    np.testing.assert_allclose(net(x).detach().norm(dim=1).numpy(), 1.0, rtol=1e-5)
    config.pop("normalise")  # a file saved before the option: free-length embeddings, as it was trained
    torch.manual_seed(0)
    old = EmbeddingNet(config).eval()
    assert not np.allclose(old(x).detach().norm(dim=1).numpy(), 1.0)
    np.testing.assert_allclose(F.normalize(old(x), dim=1).detach().numpy(), net(x).detach().numpy(), rtol=1e-5)


@pytest.mark.parametrize("all_pairs", [True, False])
def test_siamese_and_classifier_separate_toy_classes(tmp_path, all_pairs):
    images, classes, _ = toy_set()
    settings = SiameseSettings(epochs=10, batch_size=16, shift=1, all_pairs=all_pairs)
    siamese, hist = train_siamese(images, classes, settings, embedding_dim=8, **ARCH)
    classifier, _ = train_classifier(images, classes, settings, **ARCH)
    q_images, q_classes, _ = toy_set(10, seed=1)
    for net in (siamese, classifier):
        enc = as_encoder(net, "test")
        assert isinstance(enc, Encoder) and enc.kind == "dense"
        e_db, e_q = enc.encode(images), enc.encode(q_images)
        assert e_db.dtype == np.float32 and e_db.shape == (len(images), enc.size)
        ranked = m.ranked_relevance(m.euclidean_distances(e_q, e_db), m.same_class(q_classes, classes))
        assert m.map_mrr(ranked)["map"] > 0.8, net.config["kind"]  # chance: 0.5
    path = save_model(siamese, tmp_path / "siamese.pt", {"note": "toy"})
    enc = load_retrieval_model(path)
    assert len(enc.model_id) == 64 and enc.metadata == {"note": "toy"}
    np.testing.assert_allclose(enc.encode(q_images), as_encoder(siamese, "x").encode(q_images), atol=1e-5)
    with pytest.raises(InputError, match="expected"):
        enc.encode(np.zeros((2, 8, 8), np.float32))


@pytest.mark.parametrize("method", ["osdh", "dsh"])
def test_hashing_codes_rank_shared_labels_first(tmp_path, method):
    images, _, labels = toy_set()
    net, hist = train_hashing(images, labels, 16, HashSettings(method=method, epochs=6, batch_size=16, shift=1,
                                                               alphas=(1.0, 4.0)), **ARCH)
    assert net.alpha == 4.0  # the continuation reached its last stage
    codes = hash_codes(net, images)
    assert set(np.unique(codes)) <= {-1.0, 1.0}
    q_images, _, q_labels = toy_set(10, seed=1)
    enc = as_encoder(net, "id")
    assert enc.kind == "binary" and enc.encode(images).shape == (len(images), 2)
    np.testing.assert_array_equal(unpack_bits(enc.encode(images), 16), (codes > 0).astype(np.uint8))
    ranked = m.ranked_relevance(m.hamming_distances(enc.encode(q_images), enc.encode(images)),
                                m.shared_labels(q_labels, labels))
    rel = m.shared_labels(q_labels, labels)
    chance = m.multilabel_scores(m.ranked_relevance(np.random.default_rng(0).random(rel.shape), rel), p=10)
    assert m.multilabel_scores(ranked, p=10)["ndcg"] > chance["ndcg"] + 0.1
    path = save_model(net, tmp_path / "hash.pt")
    reloaded, _ = load_model(path)
    np.testing.assert_array_equal(hash_codes(reloaded, q_images), hash_codes(net, q_images))


def test_wrong_files_are_input_errors(tmp_path):
    images, classes, labels = toy_set(8)
    net, _ = train_hashing(images, labels, 8, HashSettings(epochs=1, batch_size=8, shift=0), **ARCH)
    path = save_model(net, tmp_path / "h.pt")
    payload = torch.load(path, weights_only=True)
    payload["config"]["n_bits"] = 16  # architecture no longer matches the weights
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="shape"):
        load_retrieval_model(tmp_path / "bad.pt")
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a DeepSimilarity retrieval model"):
        load_retrieval_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(InputError):
        load_retrieval_model(tmp_path / "junk.pt")
    with pytest.raises(InputError):
        load_retrieval_model(tmp_path / "missing.pt")
    with pytest.raises(InputError):
        train_hashing(images, labels, 12, HashSettings(epochs=1))


def test_itq_and_spectral_hashing():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 20)) @ rng.standard_normal((20, 20))
    itq = ITQ.fit(x, 8, iterations=0)
    start = itq.quantisation_loss(x)
    itq = ITQ.fit(x, 8, iterations=30)
    assert itq.quantisation_loss(x) < start  # the rotation lowers the quantisation loss
    assert np.allclose(itq.rotation @ itq.rotation.T, np.eye(8), atol=1e-8)
    pca = PCA.fit(x, 4)
    assert np.allclose(pca.components.T @ pca.components, np.eye(4), atol=1e-8)
    sh = SpectralHashing.fit(x, 16)
    codes = sh.encode(x)
    assert codes.shape == (200, 16) and set(np.unique(codes)) <= {-1.0, 1.0}
    # the first bit of the widest direction (mode 1) splits it at its midpoint: roughly balanced
    assert 0.2 < (codes[:, 0] > 0).mean() < 0.8
    # nearby points share more bits than far ones
    near = (sh.encode(x[:1] + 1e-3) == codes[:1]).mean()
    assert near == 1.0


def test_siamese_table_rows_and_target_checks():
    row = {"dataset": "toy", "folds": 3, "random_map": 0.5, "random_mrr": 0.69,
           "siamese": {"queries": 10, "map": 0.60, "mrr": 0.66}, "supervised": {"queries": 10, "map": 0.57, "mrr": 0.70}}
    table = siamese_table([row]).splitlines()
    assert len(table) == 3 and table[0].count("|") == table[2].count("|")
    # MAP above the baseline: yes; MRR 0.04 below it: no
    assert table[2] == "| toy (3 folds) | 10 | 0.600 | 0.570 | 0.660 | 0.700 | 0.500 | 0.690 | yes | no |"
