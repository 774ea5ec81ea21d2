"""The configuration base: every configuration class checks and reports the same way."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from diffclip_cli.errors import ModelError
from diffclip_cli.model.config import (
    ConfigBase,
    FinetuneConfig,
    ModelConfig,
    PretrainConfig,
)
from diffclip_cli.model.student import StudentConfig
from diffclip_cli.train.distill import DistillConfig

# one valid instance of each, an int field, a float field and a list field of each
CONFIGS = [
    (ModelConfig(), "window", "mask_ratio", None),
    (PretrainConfig(), "epochs", "lr", "crop_sizes"),
    (FinetuneConfig(), "batch_size", "gamma", "milestones"),
    (StudentConfig(hsi_bands=4, lidar_bands=1, num_classes=3), "hidden", None, "dilations"),
    (DistillConfig(), "pixels", "holdout", "dilations"),
]
IDS = [type(c[0]).__name__ for c in CONFIGS]


@pytest.mark.parametrize(("config", "int_field", "float_field", "list_field"), CONFIGS,
                         ids=IDS)
def test_every_configuration_refuses_an_unknown_field_the_same_way(config, int_field,
                                                                    float_field, list_field):
    name = type(config).__name__
    assert isinstance(config, ConfigBase)
    with pytest.raises(ModelError) as err:
        type(config).from_dict({**config.to_dict(), "no_such_field": 1}, source="conf.yaml")
    assert err.value.message == f"unknown {name} fields ['no_such_field']"
    assert err.value.path == "conf.yaml" and err.value.exit_code == 6
    assert err.value.hint == f"valid fields are {[f.name for f in dataclasses.fields(config)]}"
    with pytest.raises(ModelError, match=f"^unknown {name} fields"):
        config.with_overrides(no_such_field=1)
    assert type(config).unknown_fields({int_field: 1, "zz": 2, "aa": 3}) == ["aa", "zz"]


@pytest.mark.parametrize(("config", "int_field", "float_field", "list_field"), CONFIGS,
                         ids=IDS)
def test_every_configuration_checks_types_the_same_way(config, int_field, float_field,
                                                       list_field):
    for value in ("7", 7.5, True, None):
        with pytest.raises(ModelError) as err:
            dataclasses.replace(config, **{int_field: value})
        assert err.value.message == f"{int_field} must be an integer, got {value!r}"
        with pytest.raises(ModelError, match=f"^{int_field} must be an integer"):
            type(config).from_dict({**config.to_dict(), int_field: value})
    if float_field is not None:
        with pytest.raises(ModelError) as err:
            dataclasses.replace(config, **{float_field: "0.5"})
        assert err.value.message == f"{float_field} must be a number, got '0.5'"
    if list_field is not None:
        with pytest.raises(ModelError) as err:
            dataclasses.replace(config, **{list_field: [1, "x"]})
        assert err.value.message == f"{list_field} entries must be an integer, got 'x'"
        with pytest.raises(ModelError, match=f"^{list_field} must be a list of integers"):
            dataclasses.replace(config, **{list_field: 3})


@pytest.mark.parametrize(("config", "int_field", "float_field", "list_field"), CONFIGS,
                         ids=IDS)
def test_every_configuration_round_trips_as_plain_values(config, int_field, float_field,
                                                         list_field):
    data = config.to_dict()
    assert list(data) == [f.name for f in dataclasses.fields(config)]
    assert all(v is None or isinstance(v, (int, float, str, bool, list)) for v in data.values())
    assert type(config).from_dict(data) == config
    # numpy integers (from a computed schedule) become plain ints: JSON-able in model files
    again = dataclasses.replace(config, **{int_field: np.int64(getattr(config, int_field))})
    assert type(getattr(again, int_field)) is int and again == config
    if list_field is not None:  # YAML lists become tuples, so configurations stay hashable
        listed = dataclasses.replace(config, **{list_field: [1, 3]})
        assert getattr(listed, list_field) == (1, 3) and hash(listed)


@pytest.mark.parametrize(("make", "words"), [
    (lambda: ModelConfig(window=6), "window must be a positive odd number of pixels, got 6"),
    (lambda: PretrainConfig(batch_size=0), "batch_size must be at least 1, got 0"),
    (lambda: FinetuneConfig(gamma=2.0), "gamma must lie in (0, 1], got 2.0"),
    (lambda: StudentConfig(hsi_bands=4, lidar_bands=0, num_classes=2, pool=4),
     "pool must be a positive odd number, got 4"),
    (lambda: DistillConfig(holdout=1.0), "holdout must lie in [0, 1), got 1.0"),
])
def test_every_configuration_reports_a_bad_range_as_a_model_error(make, words):
    with pytest.raises(ModelError) as err:  # a ValueError too, for code that knows no diffclip
        make()
    assert err.value.message == words and isinstance(err.value, ValueError)


def test_a_missing_required_field_names_the_class():
    with pytest.raises(ModelError, match=r"^invalid StudentConfig \(.*num_classes"):
        StudentConfig.from_dict({"hsi_bands": 4, "lidar_bands": 0})


def test_ints_stay_ints_in_float_fields_so_stored_configurations_keep_their_bytes():
    cfg = PretrainConfig.from_dict({"weight_decay": 0, "lr": 1})
    assert cfg.to_dict()["weight_decay"] == 0 and type(cfg.to_dict()["weight_decay"]) is int
