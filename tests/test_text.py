"""Prompts, the word-level tokenizer, the text encoder and the classifier's text side."""

from __future__ import annotations

import json

import pytest
import torch

from diffclip_cli.errors import InputError, LabelError
from diffclip_cli.model.classifier import DiffCLIPClassifier
from diffclip_cli.model.config import load_preset
from diffclip_cli.model.network import DiffCLIPNet
from diffclip_cli.model.prompts import build_prompts, read_descriptions
from diffclip_cli.model.text import SPECIALS, TextEncoder, Vocabulary, words

TINY = load_preset("tiny").model
NAMES = ["Lettuce_romaine_4wk", "Grass", "Stressed-grass"]


def test_templates_are_the_papers():
    assert build_prompts(NAMES[:1], template="p1") == ["a patch of a lettuce romaine 4wk."]
    assert build_prompts(NAMES[:1], template="p2") == ["a nice patch of a lettuce romaine 4wk."]
    assert build_prompts(NAMES[:1], template="p3") == ["a fusion patch of a lettuce romaine 4wk."]
    assert build_prompts(NAMES[:1], template="p4") == [
        "a multimodal fusion patch of a lettuce romaine 4wk with strong semantic information."]
    assert build_prompts(["Water"]) == build_prompts(["Water"], template="p4")
    assert build_prompts(["Water"], template="an image of {class}") == ["an image of water"]
    with pytest.raises(ValueError, match="template"):
        build_prompts(["Water"], template="p7")


@pytest.mark.parametrize("fmt", ["csv", "yaml", "json"])
def test_p5_descriptions_from_files(tmp_path, fmt):
    desc = {"lettuce romaine 4wk": "young lettuce in rows, bare soil between",
            "GRASS": "lawn grass, NDVI about 0.5, under 20 cm tall",
            "Stressed-grass": "dry grass, low near-infrared reflectance."}
    path = tmp_path / f"d.{fmt}"
    if fmt == "csv":
        path.write_text("class,description\n" + "".join(f'{k},"{v}"\n' for k, v in desc.items()))
    elif fmt == "json":
        path.write_text(json.dumps(desc))
    else:
        path.write_text("".join(f'{k}: "{v}"\n' for k, v in desc.items()))
    assert read_descriptions(path) == desc
    prompts = build_prompts(NAMES, template="p5", descriptions=path)
    assert prompts[0] == "lettuce romaine 4wk: young lettuce in rows, bare soil between."
    assert prompts[1] == "grass: lawn grass, NDVI about 0.5, under 20 cm tall."
    assert prompts[2].endswith("low near-infrared reflectance.")


def test_p5_errors_name_the_classes(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"Grass": "lawn", "Asphalt": "road"}))
    with pytest.raises(LabelError, match="Asphalt") as err:
        build_prompts(NAMES, template="p5", descriptions=path)
    assert "Lettuce_romaine_4wk" in str(err.value) and "d.json" in str(err.value)
    with pytest.raises(LabelError, match=r"no description.*Lettuce"):
        build_prompts(NAMES, template="p5", descriptions={"Grass": "lawn"})
    with pytest.raises(LabelError, match="p5 needs"):
        build_prompts(NAMES, template="p5")
    with pytest.raises(InputError, match="not found"):
        read_descriptions(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("name;text\nGrass;lawn\n")
    with pytest.raises(InputError, match=r"class.*description"):
        read_descriptions(bad)


def test_tokenizer_round_trip_and_unknown_words():
    prompts = [*build_prompts(NAMES, template="p4"), *build_prompts(NAMES, template="p1")]
    vocab = Vocabulary.build(prompts)
    assert tuple(vocab.tokens[:4]) == SPECIALS
    assert "romaine" in vocab and "4wk" in vocab and "." in vocab and "_" not in vocab
    for p in prompts:
        ids = vocab.encode(p, context_length=TINY.context_length)
        assert ids[0] == vocab.sot_id and ids[-1] == vocab.eot_id
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == p
    ids = vocab.encode("a patch of a zebra crossing.", context_length=32)
    assert ids.count(vocab.unk_id) == 2
    assert vocab.decode(ids) == "a patch of a <unk> <unk>."
    assert vocab.unknown_words("a patch of zebra") == ["zebra"]
    again = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab
    assert words("Lettuce_romaine_4wk, NDVI 0.5!") == ["lettuce", "romaine", "4wk", ",", "ndvi",
                                                       "0", ".", "5", "!"]


def test_batch_padding_and_truncation_keep_end_of_text():
    vocab = Vocabulary.build(["a b c d e f g h"])
    batch = vocab.encode_batch(["a b", "a b c d e f g h"], context_length=6)
    assert batch.shape == (2, 6)
    assert batch[0].tolist()[4:] == [vocab.pad_id] * 2
    assert batch[1, -1] == vocab.eot_id  # cut to fit, end token kept
    assert vocab.decode(batch[1].tolist()) == "a b c d"


def test_text_encoder_features_are_unit_and_ignore_padding():
    vocab = Vocabulary.build(build_prompts(NAMES, template="p1"))
    enc = TextEncoder(vocab_size=len(vocab), width=32, layers=2, heads=4, context_length=20,
                      embed_dim=16, seed=0).eval()
    ids = vocab.encode_batch(build_prompts(NAMES, template="p1"), context_length=20)
    with torch.no_grad():
        z = enc(ids)
        z_short = enc(ids[:, :12])
    assert z.shape == (3, 16)
    assert torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(z, z_short, atol=1e-5)  # causal: padding after <eot> cannot matter
    assert (z @ z.T - torch.eye(3)).abs().max() > 1e-3  # classes differ
    same = TextEncoder(vocab_size=len(vocab), width=32, layers=2, heads=4, context_length=20,
                       embed_dim=16, seed=0).eval()
    with torch.no_grad():
        assert torch.equal(same(ids), z)


def test_classifier_caches_text_until_weights_change():
    prompts = build_prompts(NAMES, template="p1")
    net = DiffCLIPNet(TINY, hsi_bands=4, seed=0)
    clf = DiffCLIPClassifier(net, vocabulary=Vocabulary.build(prompts), prompts=prompts, seed=0)
    x = torch.randn(10, 4, 5, 5)
    p1 = clf.predict_proba(x)
    p2 = clf.predict_proba(x, batch_size=3)
    assert p1.shape == (10, 3) and torch.allclose(p1.sum(1), torch.ones(10))
    assert torch.equal(clf.predict_proba(x), p1)
    assert torch.allclose(p1, p2, atol=1e-6)
    with torch.no_grad():
        clf.text.projection.weight.mul_(-1.0)
    assert not torch.allclose(clf.predict_proba(x), p1)
    assert clf.prompts == prompts
