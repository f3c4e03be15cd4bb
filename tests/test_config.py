"""caviar.config: defaults < experiment file < --set overrides; bad input gets a clear message."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from caviar.config.loading import load_config, parse_override
from caviar.config.schema import Config
from caviar.config.space import Choice, Range
from caviar.errors import ConfigError

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_default_yaml_equals_builtin_defaults():
    """experiments/default.yaml is exactly what bare `caviar sweep` runs."""
    assert load_config(EXPERIMENTS / "default.yaml") == Config()


@pytest.mark.parametrize("name", ["default", "smoke", "random", "asha"])
def test_every_experiment_file_is_complete(name):
    """Each experiment file is a full record: it names every section and every key."""
    tree = yaml.safe_load((EXPERIMENTS / f"{name}.yaml").read_text())
    full = Config().to_dict()
    for section, values in full.items():
        assert section in tree, f"{name}.yaml lacks {section}"
        if isinstance(values, dict):
            assert set(tree[section]) == set(values), f"{name}.yaml {section} keys differ"
    load_config(EXPERIMENTS / f"{name}.yaml")


def test_experiment_files_say_what_they_are():
    """random.yaml searches the same space without early stopping; smoke.yaml is tiny."""
    random, default = load_config(EXPERIMENTS / "random.yaml"), Config()
    assert random.search.scheduler == "random" and random.space == default.space
    smoke = load_config(EXPERIMENTS / "smoke.yaml")
    assert (smoke.search.num_samples, smoke.search.max_epochs, smoke.data.train_subset) == (4, 2, 2000)
    assert load_config(EXPERIMENTS / "asha.yaml").search.scheduler == "asha"


def test_default_space_follows_the_notes():
    """lr 1e-6..10 and weight decay on log scales, dropout linear, momentum via 1 - beta."""
    space = Config().space
    assert space.lr == Range(low=1e-6, high=10, scale="log")
    assert space.weight_decay == Range(low=1e-6, high=0.1, scale="log")
    assert space.dropout == Range(low=0.1, high=0.7, scale="linear")
    assert space.momentum == Range(low=0.9, high=0.999, scale="one_minus_log")
    assert space.batch_size == Choice(choices=[64, 128, 256, 512, 1024])
    assert len(space.optimizer.choices) == 6 and len(space.lr_schedule.choices) == 5


def test_resolution_order(tmp_path):
    """File values beat defaults; --set beats the file; keyword values beat --set."""
    path = tmp_path / "e.yaml"
    path.write_text("name: mine\nsearch: {num_samples: 7, max_epochs: 3}\n")
    config = load_config(path, ["search.num_samples=9"], search__max_epochs=4)
    assert (config.name, config.search.num_samples, config.search.max_epochs) == ("mine", 9, 4)
    assert config.search.scheduler == "asha"  # untouched default


def test_override_values_are_parsed_and_type_checked():
    """--set values parse as YAML: numbers, lists, booleans; 1e-4 is a number, not a string."""
    assert parse_override("space.lr.low=1e-4") == (["space", "lr", "low"], 1e-4)
    config = load_config(None, ["space.lr.low=1e-4", "space.optimizer=[adam, sgd]", "space.batch_norm=false",
                                "resources.gpus_per_trial=0.25", "data.train_subset=0.1"])
    assert config.space.lr == Range(low=1e-4, high=10, scale="log")  # partial override keeps high/scale
    assert config.space.optimizer == Choice(choices=["adam", "sgd"])
    assert config.space.batch_norm is False
    assert config.resources.gpus_per_trial == 0.25 and config.data.train_subset == 0.1


@pytest.mark.parametrize(
    "override,needle",
    [
        ("search.num_sample=3", "search.num_sample: unknown key"),
        ("serch.num_samples=3", "serch: unknown key"),
        ("search.num_samples=many", "search.num_samples: Input should be a valid integer"),
        ("space.lr.low=20", "space.lr: low (20) must be below high (10)"),
        ("space.weight_decay.low=0", "space.weight_decay: a log-scale range needs low > 0"),
        ("space.momentum.high=1.2", "space.momentum: scale one_minus_log"),
        ("space.optimizer=[adam, adma]", "space.optimizer: 'adma' is not one of"),
        ("space.conv_width.scale=log", "space.conv_width: takes whole numbers"),
        ("resources.gpus_per_trial=-1", "resources.gpus_per_trial: must be >= 0"),
        ("resources.gpus_per_trial=2", "resources.gpus_per_trial: must be at most 1: a trial trains on one GPU"),
        ("resources.gpus_per_trial=1.5", "resources.gpus_per_trial: must be at most 1"),
        ("search.scheduler=grid", "search.scheduler: Input should be 'asha', 'random' or 'pbt'"),
        ("data.train_subset=0", "data.train_subset: must be a positive count"),
        ("name=a/b", "name: must be a plain folder name"),
        ("name=" + "x" * 201, "name: is 201 bytes long; a folder name holds at most 200"),
        ("name=run:1", "holds characters a file system cannot hold"),
        ("name=a\tb", "holds characters a file system cannot hold"),
        ("train.eval_batch_size=big", "train.eval_batch_size: must be a positive whole number of images (e.g. 256) or auto"),
        ("train.eval_batch_size=0", "train.eval_batch_size: must be a positive whole number"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    """Each bad value raises ConfigError naming the dotted key and what is wrong."""
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert needle in str(error.value)
    assert "Traceback" not in str(error.value)


def test_gpu_shares_up_to_one_gpu_are_accepted():
    for share in (0, 0.25, 1, "auto"):
        assert load_config(None, [f"resources.gpus_per_trial={share}"]).resources.gpus_per_trial == share


def test_bad_files(tmp_path):
    """A missing file, invalid YAML or a non-mapping file each get their own message."""
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("search: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(None, ["search.num_samples"])


def test_resolved_fills_environment_defaults(monkeypatch, tmp_path):
    """data.root and storage left null resolve to $CAVIAR_DATA and $CAVIAR_RESULTS."""
    monkeypatch.setenv("CAVIAR_DATA", str(tmp_path / "d"))
    monkeypatch.setenv("CAVIAR_RESULTS", str(tmp_path / "r"))
    config = Config().resolved()
    assert config.data.root == str(tmp_path / "d") and config.storage == str(tmp_path / "r")
    assert Config().data.root is None  # the original is untouched


def test_yaml_files_read_numbers_as_numbers(tmp_path):
    """`lr: 1e-3` in a file is a number, as with --set (YAML 1.1 alone reads it as a string)."""
    path = tmp_path / "e.yaml"
    path.write_text("space:\n  weight_decay: 1e-3\n  lr: {low: 1e-4, high: 5E-2, scale: log}\n")
    config = load_config(path)
    assert config.space.weight_decay == 1e-3 and config.space.lr.high == 5e-2


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("data:\n  val_size: 100\ndata:\n  val_size: 200\n", "'data' is given twice \\(line 3\\)"),
    ("search:\n  num_samples: 4\n  num_samples: 8\n", "'num_samples' is given twice"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "is not a text file"),
    ("- a\n- b\n", "must be a mapping of sections"),
])
def test_bad_experiment_files_say_what_is_wrong(tmp_path, content, message):
    path = tmp_path / "e.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_a_folder_is_not_an_experiment_file(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_damaged_saved_config_names_the_file(tmp_path):
    from caviar.config.loading import read_saved_config

    (tmp_path / "caviar.yaml").write_text("name: x\nsearch: [unclosed\n")
    with pytest.raises(ConfigError, match="caviar.yaml is not valid YAML"):
        read_saved_config(str(tmp_path))
    (tmp_path / "caviar.yaml").write_text("")
    with pytest.raises(ConfigError, match="caviar.yaml is empty"):
        read_saved_config(str(tmp_path))
    with pytest.raises(ConfigError, match="not a caviar experiment folder"):
        read_saved_config(str(tmp_path / "nothing"))


def test_a_point_naming_what_the_space_lacks_is_refused_before_any_compute():
    """A typo in `search.points` names the point and the key; Ray would only fail at fit time."""
    with pytest.raises(ConfigError, match=r"search.points\[1\] names 'lrr'.*may set .*weight_decay"):
        load_config(None, ["search.points=[{lr: 0.1}, {lrr: 0.1}]"])
    with pytest.raises(ConfigError, match=r"search.points\[0\].max_epochs must be a whole number"):
        load_config(None, ["search.points=[{lr: 0.1, max_epochs: 0}]"])
    assert load_config(None, ["search.points=[{lr: 0.1, seed: 3, max_epochs: 4}]"]).search.points[0]["max_epochs"] == 4


def test_search_metric_of_older_files_still_loads_and_another_is_refused():
    """`search.metric` is gone (trials are ranked by val_acc everywhere); a file written when it
    existed (`metric: val_acc`) loads, and asking for another metric says why it cannot be."""
    assert "metric" not in load_config(None, ["search.metric=val_acc"]).to_dict()["search"]
    with pytest.raises(ConfigError, match="ranks trials by val_acc only"):
        load_config(None, ["search.metric=val_loss"])


def test_crop_padding_is_zeros_unless_reflect_is_chosen():
    """data.augment.pad_mode: zeros by default (runs from before it existed train as they did),
    reflect when set; any other value is refused naming the key and both choices."""
    assert load_config(None).data.augment.pad_mode == "zeros"
    assert load_config(None, ["data.augment.pad_mode=reflect"]).data.augment.pad_mode == "reflect"
    with pytest.raises(ConfigError, match=r"data\.augment\.pad_mode: Input should be 'zeros' or 'reflect' \(got 'edge'\)"):
        load_config(None, ["data.augment.pad_mode=edge"])


def test_a_first_rung_beyond_the_last_epoch_is_refused():
    """grace_period > max_epochs with ASHA says two things at once: refused, naming both keys and
    the ways out; random search has no rungs, and a staged experiment's stages set their own epochs."""
    with pytest.raises(ConfigError, match=r"search.grace_period \(3\) is beyond search.max_epochs \(2\)"):
        load_config(None, ["search.max_epochs=2", "search.grace_period=3"])
    assert load_config(None, ["search.max_epochs=2", "search.grace_period=3", "search.scheduler=random"])
    assert load_config("staged", ["search.grace_period=3"]).search.grace_period == 3


@pytest.mark.parametrize("setting", ["data.split_seed=-1", "search.seed=-3", f"search.seed={2**32}"])
def test_a_seed_numpy_cannot_take_is_refused_before_any_compute(setting):
    with pytest.raises(ConfigError, match=setting.split("=")[0]):
        load_config(None, [setting])
