from pathlib import Path

import pytest

from hpo.errors import HpoError
from hpo.spec.space import Fixed, FloatRange, IntRange
from hpo.spec.study_spec import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
SEVEN = {"weight_sharing", "aux_weight", "dropout", "batch_norm", "lr", "beta1", "weight_decay"}


def test_default_spec_declares_the_seven_parameters() -> None:
    spec = load_spec("twin")
    assert spec.name == "twin" and spec.direction == "maximize"
    assert set(spec.space) >= SEVEN
    assert spec.space["weight_sharing"] == Fixed(True)  # a searched choice drifted to unshared networks
    assert spec.space["lr"] == FloatRange(1e-4, 1e-2, log=True)
    assert (spec.train.folds, spec.train.epochs, spec.train.train_pairs) == (3, 25, 1000)


def test_every_shipped_spec_loads() -> None:
    for path in (ROOT / "studies").glob("*.toml"):
        load_spec(path)


def test_plain_values_fix_parameters_and_int_ranges_take_steps() -> None:
    spec = parse_spec(
        {
            "study": {"name": "x"},
            "space": {"batch_norm": False, "conv1_channels": {"low": 16, "high": 64, "step": 16}, "lr": 0.001},
        }
    )
    assert spec.space["batch_norm"] == Fixed(False)
    assert spec.space["conv1_channels"] == IntRange(16, 64, step=16)
    assert not spec.is_fixed
    fixed = parse_spec({"study": {"name": "x"}, "space": {"batch_norm": False, "lr": 0.001}})
    assert fixed.is_fixed


def test_suggest_returns_fixed_and_sampled_values() -> None:
    class FakeTrial:
        def suggest_categorical(self, name, choices):
            return choices[-1]

        def suggest_float(self, name, low, high, *, step=None, log=False):
            return high

        def suggest_int(self, name, low, high, *, step=1, log=False):
            return low

    spec = parse_spec(
        {
            "study": {"name": "x"},
            "space": {
                "batch_norm": {"choices": [True, False]},
                "lr": {"low": 1e-4, "high": 1e-2},
                "hidden": {"low": 8, "high": 64},
                "dropout": 0.1,
            },
        }
    )
    assert spec.suggest(FakeTrial()) == {"batch_norm": False, "lr": 1e-2, "hidden": 8, "dropout": 0.1}


BAD_SPECS = {
    "unknown parameter": ({"study": {"name": "x"}, "space": {"momentum": 0.9}}, "unknown parameter 'momentum'"),
    "unknown study key": ({"study": {"name": "x", "colour": "red"}}, "unknown \\[study\\] keys: colour"),
    "unknown table": ({"study": {"name": "x"}, "extra": {}}, "unknown top-level tables: extra"),
    "unknown range key": (
        {"study": {"name": "x"}, "space": {"lr": {"low": 0.1, "high": 0.2, "base": 2}}},
        "unknown keys of 'lr'",
    ),
    "low >= high": ({"study": {"name": "x"}, "space": {"lr": {"low": 0.1, "high": 0.01}}}, "low .* must be below high"),
    "log with low <= 0": (
        {"study": {"name": "x"}, "space": {"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}},
        "log range needs low > 0",
    ),
    "empty choices": ({"study": {"name": "x"}, "space": {"batch_norm": {"choices": []}}}, "non-empty list"),
    "wrong type": ({"study": {"name": "x"}, "space": {"batch_norm": "yes"}}, "'batch_norm' takes bool"),
    "out of bounds": ({"study": {"name": "x"}, "space": {"dropout": 1.5}}, "'dropout' must be in \\[0, 1\\)"),
    "unknown schedule": (
        {"study": {"name": "x"}, "space": {"schedule": {"choices": ["cosine", "linear"]}}},
        "'schedule' must be 'constant' or 'cosine'",
    ),
    "rotation too large": (
        {"study": {"name": "x"}, "space": {"rotate": {"low": 0.0, "high": 90.0}}},
        "'rotate' must be in \\[0, 45\\]",
    ),
    "no name": ({"study": {}}, "needs a name"),
    "bad direction": ({"study": {"name": "x", "direction": "up"}}, "direction must be"),
    "one fold": ({"study": {"name": "x"}, "train": {"folds": 1}}, "folds must be between 2"),
    "more folds than pairs": (
        {"study": {"name": "x"}, "train": {"folds": 20, "train_pairs": 10}},
        "folds must be between 2",
    ),
    "grid over a range": (
        {"study": {"name": "x", "sampler": "grid"}, "space": {"lr": {"low": 0.1, "high": 0.2}}},
        "grid sampler needs",
    ),
}


@pytest.mark.parametrize("raw,message", BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_specs_fail_with_a_clear_message(raw: dict, message: str) -> None:
    with pytest.raises(HpoError, match=message):
        parse_spec(raw)


def test_malformed_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[study\nname = 'x'")
    with pytest.raises(HpoError, match="bad.toml.*not valid TOML"):
        load_spec(path)


def test_missing_spec_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(HpoError, match="not found"):
        load_spec(tmp_path / "nope.toml")


def test_overrides_are_validated() -> None:
    spec = parse_spec({"study": {"name": "x"}})
    assert spec.with_overrides(folds=3, epochs=4, name="y").train.folds == 3
    with pytest.raises(HpoError, match="unknown pruner 'fast'"):
        spec.with_overrides(pruner="fast")


def test_final_epochs_is_read_checked_reset_by_epochs_and_left_out_of_the_pin(write_spec) -> None:
    from hpo.spec.pin import check_pin, pin_of

    text = write_spec(name="f").read_text()

    def with_final(value: str) -> str:
        return text.replace("train_pairs = 200", f"train_pairs = 200\nfinal_epochs = {value}")

    spec = load_spec(write_spec(with_final("60"), name="f"))
    assert (spec.train.epochs, spec.train.final_epochs, spec.train.test_epochs) == (2, 60, 60)
    assert load_spec(write_spec(text, name="g")).train.test_epochs == 2, "default: as long as a trial"
    assert spec.with_overrides(epochs=5).train.test_epochs == 5, "--epochs sets both"
    assert spec.with_overrides(epochs=2).train.test_epochs == 60, "the spec's own epochs keep it"
    for bad, message in (("0", "final_epochs must be at least 1"), ("2.5", "final_epochs must be an integer")):
        with pytest.raises(HpoError, match=message):
            load_spec(
                write_spec(text.replace("train_pairs = 200", f"train_pairs = 200\nfinal_epochs = {bad}"), name="b")
            )
    plain = load_spec(write_spec(text, name="f"))
    assert pin_of(plain)["hash"] == pin_of(spec)["hash"], "how the pick is tested does not change a trial's value"
    assert check_pin("f", pin_of(plain), spec, allow_space_change=False) is False
