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


def test_served_fast_adaptation_beats_prototypes_at_15_way_5_shot_on_validation():
    """The bundled text model's adaptation defaults (fitted by ``recalibrate --adaptation``) must pay where the
    support set can teach the head something: whole validation domains, 5 requests an intent.  Ten steps at
    the learning rate 0.1, the defaults before, gain 0.77 points on these episodes; the fitted ones 1.65."""
    from metalearn.evaluate_text import served_scorers
    from metalearn_server.execution.repository import BUNDLED_REPOSITORY, ModelRepository

    served = ModelRepository(BUNDLED_REPOSITORY, ["CPUExecutionProvider"], intra_op_threads=2).get("text-minilm", "")
    data = clinc.load("val")
    texts, _ = data.flat()
    embeddings = served.embed(texts)
    sampler = clinc.TextEpisodeSampler(data, 15, 5, 15, seed=7, same_domain=True)
    scorers = {method: served_scorers(served, method) for method in ("prototype", "finetune")}
    correct = {method: 0 for method in scorers}
    for _ in range(100):
        episode = sampler.sample()
        for method, score in scorers.items():
            probs, _ = score(embeddings[episode.support], episode.support_labels, embeddings[episode.query])
            correct[method] += int((probs.argmax(1) == episode.query_labels).sum())
    gain = (correct["finetune"] - correct["prototype"]) / (100 * 15 * 15)
    assert gain > 0.01, gain


def test_the_card_writer_replaces_the_tables_and_keeps_the_notes_below_them(tmp_path):
    from metalearn.evaluate_text import write_card

    (tmp_path / "MODEL_CARD.md").write_text("# m\n\n## Training\n- x\n\n## Accuracy\n\nold intro:\n\n| a |\n| 1 |\n\n"
                                            "| b |\n| 2 |\n\nA note on an earlier fit:\n\n| c |\n| 3 |\n")
    write_card(tmp_path, "| a |\n| 9 |\n\n| b |\n| 8 |", 10)
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.startswith("# m\n\n## Training\n- x\n\n## Accuracy\n\nCLINC150 `test` requests")
    assert "| 9 |" in card and "| 8 |" in card and "| 1 |" not in card and "| 2 |" not in card
    assert card.endswith("| b |\n| 8 |\n\nA note on an earlier fit:\n\n| c |\n| 3 |\n")
    write_card(tmp_path, "| a |\n| 7 |\n\n| b |\n| 6 |", 10)  # again: the same layout, the notes once
    assert (tmp_path / "MODEL_CARD.md").read_text() == card.replace("| 9 |", "| 7 |").replace("| 8 |", "| 6 |")


def test_the_paired_table_compares_methods_on_the_same_episodes():
    """A method better in every episode by a point is +1.00 ± 0.00 however wide the rows' own intervals are."""
    from metalearn.evaluate_text import COLUMNS, paired_table

    rng = np.random.default_rng(0)
    per_episode = {}
    for ways, shots, _ in COLUMNS:
        base = rng.uniform(0.5, 1.0, 200)
        per_episode["prototypes", ways, shots] = list(base)
        per_episode["better", ways, shots] = list(base + 0.01)
        per_episode["same", ways, shots] = list(base)
    lines = paired_table(per_episode, "prototypes", ["better", "same"]).splitlines()
    assert lines[0].startswith("| paired, minus prototypes |")
    assert lines[2] == "| better | " + " | ".join(["+1.00 ± 0.00"] * len(COLUMNS)) + " |"
    assert lines[3] == "| same | " + " | ".join(["+0.00 ± 0.00"] * len(COLUMNS)) + " |"
