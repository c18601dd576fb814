import json

import pytest

from diffvqa_cache.training.regressor import RegressorConfig


def test_round_trip_through_json():
    config = RegressorConfig(branches="D", ms_levels=(1, 3), use_tcab=False, dff_channels=32)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["ms_levels"] == [1, 3]
    restored = RegressorConfig.from_dict(data)
    assert restored == config
    assert isinstance(restored.ms_levels, tuple)


def test_defaults_round_trip():
    assert RegressorConfig.from_dict(RegressorConfig().to_dict()) == RegressorConfig()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"branches": "X"}, "'X'"),
        ({"ms_levels": (), "use_latent": False}, "no input"),
        ({"ms_levels": (0, 0)}, "(0, 0)"),
        ({"ms_levels": (-1,)}, "(-1,)"),
        ({"dff_channels": 0}, "dff_channels"),
        ({"dropout": 1.5}, "1.5"),
    ],
)
def test_validation_errors_echo_the_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        RegressorConfig(**kwargs)
    assert message in str(info.value)


def test_latent_only_is_allowed():
    assert RegressorConfig(ms_levels=(), use_latent=True).ms_levels == ()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="bogus"):
        RegressorConfig.from_dict({"bogus": 1})
