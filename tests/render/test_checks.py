"""Config-field checks shared by the training, regression and build configs."""

from dataclasses import dataclass

import pytest

from render.checks import check_int_fields, check_number_fields


@dataclass(frozen=True)
class _Config:
    steps: object = 3
    lr: object = 1


def test_int_fields_accept_ints_at_their_bound_and_name_the_field():
    check_int_fields("Cfg", _Config(steps=0), [("steps", 0)])
    for bad in (-1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match=rf"Cfg\.steps: expected an int >= 0, got {bad!r}"):
            check_int_fields("Cfg", _Config(steps=bad), [("steps", 0)])


def test_number_fields_store_floats_and_reject_non_finite_bools_and_failed_rules():
    config = _Config(lr=2)
    check_number_fields("Cfg", config, {"lr": (lambda x: x > 0, "> 0")})
    assert config.lr == 2.0 and isinstance(config.lr, float)
    for bad in (0, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ValueError, match=r"Cfg\.lr: expected a number > 0"):
            check_number_fields("Cfg", _Config(lr=bad), {"lr": (lambda x: x > 0, "> 0")})
