"""Config validation: every bad value gives a one-line error naming the key; arms resolution."""
import pytest

from repalign.config import ConfigError, load_config, resolve_arms, resolve_pairs, validate


@pytest.mark.parametrize("override, key", [
    ("loss.temperature=0", "loss.temperature"),
    ("loss.temperature=-0.5", "loss.temperature"),
    ("train.batch_size=1", "train.batch_size"),
    ("data.views=1", "data.views"),
    ("train.epochs=abc", "train.epochs"),
    ("train.batchsize=8", "train.batchsize"),
    ("optim.type=adam", "optim.type"),
    ("optim.lr_rule=cubic", "optim.lr_rule"),
    ("data.num_classes=11", "data.num_classes"),
    ("data.classes=[0,12]", "data.classes"),
    ("train.precision=fp8", "train.precision"),
    ("eval.schedule=sometimes", "eval.schedule"),
    ("model.encoder=vgg", "model.encoder"),
    ("loss.include_positive=3", "loss.include_positive"),
    ("pairs=[[cl,foo]]", "pairs"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    msg = str(e.value)
    assert key in msg and "\n" not in msg


def test_defaults_and_overrides():
    cfg = load_config(None, ["loss.temperature=0.1", "train.batch_size=64", "optim.lr=1"])
    assert cfg["loss"]["temperature"] == 0.1 and cfg["train"]["batch_size"] == 64
    assert isinstance(cfg["optim"]["lr"], float)
    assert [a.name for a in resolve_arms(cfg)] == ["cl", "nscl", "scl", "ce"]
    assert resolve_pairs(cfg, resolve_arms(cfg)) == [("cl", "nscl"), ("cl", "scl"), ("cl", "ce")]


def test_bundled_configs_validate():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1] / "configs"
    files = sorted(root.glob("*.yaml")) + sorted(root.glob("arms/*.yaml"))  # sweeps/ hold sweep specs
    assert any(f.name == "demo.yaml" for f in files)
    for f in files:
        cfg = load_config(f)
        assert cfg["name"] == f.stem
    paper = load_config(root / "cifar100_resnet50.yaml")
    assert paper["optim"]["type"] == "lars" and paper["train"]["batch_size"] == 1024
    assert paper["loss"]["temperature"] == 0.1 and paper["model"]["projector_out"] == 128
    assert load_config(root / "cifar10_resnet50.yaml")["loss"]["temperature"] == 0.5


def test_arm_overrides_and_aliases():
    cfg = validate({"arms": {"cl": {"objective": "cl", "temperature": 0.1},
                             "nscl": {"objective": "nscl", "optim": {"lr": 0.5}, "include_positive": True}}})
    arms = {a.name: a for a in resolve_arms(cfg)}
    assert arms["cl"].get("loss.temperature") == 0.1 and arms["cl"].overrides == {"loss.temperature": 0.1}
    assert arms["nscl"].get("optim.lr") == 0.5 and arms["nscl"].get("loss.include_positive") is True
    assert arms["nscl"].get("loss.temperature") == 0.5  # inherited default


@pytest.mark.parametrize("key, value, why", [
    ("batch_size", 64, "mini-batches"), ("train.batch_size", 64, "mini-batches"),
    ("data.views", 3, "data stream"), ("views", 3, "data stream"), ("momentun", 0.5, "not a per-arm setting"),
    ("data.source", "digits", "data stream"), ("data.num_classes", 5, "data stream"),
    ("data.augment", "none", "data stream"), ("seed", 3, "init_seed or data_seed"),
    ("model.encoder", "resnet18", "encoder"),
])
def test_refused_arm_keys(key, value, why):
    with pytest.raises(ConfigError) as e:
        validate({"arms": {"cl": {"objective": "cl"}, "x": {"objective": "nscl", key: value}}})
    assert f"arms.x.{key}" in str(e.value) and why in str(e.value) and "\n" not in str(e.value)


def test_control_arm_same_as():
    cfg = validate({"arms": {"cl": {"objective": "cl", "temperature": 0.2},
                             "cl_seed": {"same_as": "cl", "init_seed": 7},
                             "cl_data": {"same_as": "cl", "data_seed": 3}}})
    arms = {a.name: a for a in resolve_arms(cfg)}
    assert arms["cl_seed"].objective == "cl" and arms["cl_seed"].get("loss.temperature") == 0.2
    assert arms["cl_seed"].init_seed == 7 and arms["cl_seed"].data_seed is None
    assert arms["cl_data"].data_seed == 3
    with pytest.raises(ConfigError, match="same_as"):
        validate({"arms": {"cl": {"objective": "cl"}, "x": {"same_as": "nope"}}})
    with pytest.raises(ConfigError, match="objective"):
        validate({"arms": {"cl": {"objective": "byol"}}})
