"""The text model's training side: CLINC150 split by whole domains, episodes, and the MiniLM re-implementation."""
from __future__ import annotations

import json

import numpy as np
import torch

from metalearn import clinc
from metalearn.minilm import load_pretrained
from metalearn.text_encoding import make_tokenizer, token_tensors


def test_domains_are_held_out_whole():
    domains = json.loads((clinc.data_dir() / "domains.json").read_text())
    splits = [set(clinc.TRAIN_DOMAINS), set(clinc.VALIDATION_DOMAINS), set(clinc.TEST_DOMAINS)]
    assert set().union(*splits) == set(domains) and sum(map(len, splits)) == len(domains)
    intents = {split: set(clinc.load(split).intents) for split in ("train", "val", "test")}
    assert not (intents["train"] & intents["val"] or intents["train"] & intents["test"] or intents["val"] & intents["test"])
    test = clinc.load("test")
    assert test.num_classes == 45 and all(len(texts) == 30 for texts in test.texts) and len(test.outsiders) == 1000


def test_one_domain_episodes_draw_neighbouring_intents():
    data = clinc.load("test")
    episode = clinc.TextEpisodeSampler(data, 15, 5, 15, seed=3, same_domain=True).sample()
    _, labels = data.flat()
    classes = labels[episode.support.reshape(15, 5)]
    assert (classes == classes[:, :1]).all() and len(set(classes[:, 0])) == 15
    assert len({data.domains[c] for c in classes[:, 0]}) == 1
    assert not set(episode.support) & set(episode.query)


def test_validation_texts_lay_out_by_intent_for_the_open_set_fit():
    """The open-set fit samples ``[intents, requests, D]``: row c must hold intent c's requests only."""
    data = clinc.load("val")
    _, labels = data.flat()
    laid_out = data.by_class(labels[:, None].astype(np.float32))
    assert laid_out.shape == (30, 20, 1) and (laid_out[..., 0] == np.arange(30)[:, None]).all()
    assert len(data.outsiders) == 100  # oos_val: enough outsiders for a 20-way episode of 5 queries a class


def test_the_published_encoder_loads_and_embeds_paraphrases_together():
    encoder, tokenizer_json = load_pretrained()
    tokenizer = make_tokenizer(tokenizer_json, 32)
    with torch.no_grad():
        z = encoder(*token_tensors(tokenizer, ["how do I pay my electricity bill", "i need to pay the power bill",
                                               "book me a flight to tokyo", "word " * 100])).numpy()
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, atol=1e-5)
    assert z[0] @ z[1] > 0.7 and z[0] @ z[2] < 0.3
    assert token_tensors(tokenizer, ["word " * 100])[0].shape == (1, 32)  # truncated to max_tokens
