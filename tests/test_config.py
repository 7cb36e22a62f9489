import re

import pytest

from deepfactor.config import KEYS, Config, ConfigError, load_config

from conftest import REPO


def test_defaults_fill_every_key():
    config = Config.from_dict({})
    assert set(config) == set(KEYS)
    assert config["model.latent_dim"] == KEYS["model.latent_dim"].default


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[model]\nlatnet_dim = 5\n")
    with pytest.raises(ConfigError, match=r"x\.toml: unknown key 'model\.latnet_dim' "
                                          r"\(did you mean 'model\.latent_dim'\?\)"):
        load_config(path)


@pytest.mark.parametrize("text, match", [
    ("[model]\nlatent_dim = 'ten'\n", "'model.latent_dim' must be int"),
    ("[model]\nlatent_dim = 0\n", "'model.latent_dim' must be > 0"),
    ("[model]\nlikelihood = 'gamma'\n", "'model.likelihood' must be one of"),
    ("[train]\nlr = true\n", "'train.lr' must be float"),
    ("[model]\ndecoder_hidden = [40, -1]\n", "list of positive integers"),
    ("latent_dim = 3\n", "unknown key 'latent_dim'"),
    ("[model\n", "not valid TOML"),
])
def test_bad_values_are_clear_errors(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_overrides_parse_as_toml_or_bare_words():
    config = Config.from_dict({}, overrides=["model.latent_dim=7", "data.split=u3",
                                             "model.decoder_hidden=[8, 4]", "train.lr=1e-3"])
    assert config["model.latent_dim"] == 7
    assert config["data.split"] == "u3"
    assert config["model.decoder_hidden"] == [8, 4]
    assert config["train.lr"] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="--set: unknown key 'model.nope'"):
        Config.from_dict({}, overrides=["model.nope=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        Config.from_dict({}, overrides=["model.latent_dim"])


def test_resolved_config_round_trips_through_toml(tmp_path):
    config = Config.from_dict({"model": {"latent_dim": 11}}, overrides=["train.seed=4"])
    path = tmp_path / "resolved.toml"
    path.write_text(config.to_toml())
    assert dict(load_config(path)) == dict(config)


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config["data.dataset"] == "ml-100k"


@pytest.mark.parametrize("path", sorted((REPO / "models").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_configs_list_every_key(path):
    import tomllib

    listed = {f"{s}.{k}" for s, table in tomllib.loads(path.read_text()).items() for k in table}
    assert listed == set(KEYS)


def test_a_bad_override_is_blamed_on_set_not_on_the_file():
    with pytest.raises(ConfigError, match=r"^--set: 'train.epochs' must be int, got 'abc'"):
        load_config(REPO / "models" / "gaussian.toml", ["train.epochs=abc"])


def test_a_conflict_made_by_set_names_the_file_too(tmp_path):
    path = tmp_path / "scaled.toml"
    path.write_text('[model]\nlikelihood = "ordinal"\npair_scale = true\n')
    with pytest.raises(ConfigError, match=rf"^--set \(on {re.escape(str(path))}\): "
                                          r"'model.pair_scale' = true needs"):
        load_config(path, ["model.likelihood=poisson"])
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: 'model.pair_scale'"):
        path.write_text('[model]\nlikelihood = "poisson"\npair_scale = true\n')
        load_config(path)


def test_implicit_negatives_without_an_implicit_fit_is_an_error(tmp_path):
    path = tmp_path / "negatives.toml"
    path.write_text("[data]\nimplicit_negatives = 1.0\n")
    with pytest.raises(ConfigError, match="'data.implicit_negatives' = 1 draws zeros for an "
                                          "implicit fit, but 'data.implicit' is false"):
        load_config(path)
