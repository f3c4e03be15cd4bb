"""caviar.storage: experiment locations on local disk or object storage keep their kind."""

from __future__ import annotations

import pandas as pd
import pytest

from caviar import storage


@pytest.mark.parametrize("path,like,expected", [
    ("bucket/caviar/exp/trial_1", "s3://bucket/caviar/exp", "s3://bucket/caviar/exp/trial_1"),
    ("bucket/exp/trial_1/checkpoint_000002", "gs://bucket/exp", "gs://bucket/exp/trial_1/checkpoint_000002"),
    ("bucket/exp/trial_1", "s3://bucket/exp?endpoint_override=localhost:9000",
     "s3://bucket/exp/trial_1?endpoint_override=localhost:9000"),
    ("/data/exp/trial_1", "file:///data/exp", "file:///data/exp/trial_1"),
    ("/data/exp/trial_1", "/data/exp", "/data/exp/trial_1"),  # local stays a path
    ("s3://bucket/exp/trial_1", "s3://bucket/exp", "s3://bucket/exp/trial_1"),  # already a URI
    ("", "s3://bucket/exp", ""),  # no checkpoint
])
def test_paths_within_a_filesystem_become_uris_of_the_experiments_kind(path, like, expected):
    assert storage.uri(path, like) == expected


def test_leaderboard_paths_keep_the_scheme_of_the_storage(ray_session, learnable_root, tmp_path):
    """A sweep on URI storage (file:// here; s3:// behaves alike, without a bucket to test on): the
    leaderboard's trial folders and best checkpoints are URIs that reach storage, not bare paths."""
    from test_sweep import small_config

    import caviar
    from caviar.config.loading import load_config
    from caviar.sweeps import experiment

    tree = small_config(learnable_root, tmp_path, "uri", scheduler="random", num_samples=2, max_epochs=1)
    tree["storage"] = f"file://{tmp_path}/results"
    result = caviar.sweep(load_config(tree))
    assert result.path == f"file://{tmp_path}/results/uri"
    table = experiment._collect(result.path, result.config)
    board = pd.read_csv(tmp_path / "results" / "uri" / "leaderboard.csv")
    for frame in (table, board, result.trials):
        assert frame["path"].str.startswith(f"file://{tmp_path}/results/uri/trial_").all()
        assert frame["best_checkpoint"].str.startswith(tuple(frame["path"])).all()
    for location in table["best_checkpoint"]:
        assert storage.exists(location)


def test_storage_that_cannot_be_reached_is_one_clear_message(monkeypatch):
    """An s3:// URI whose endpoint refuses connections (a closed port on loopback; fake credentials,
    no instance metadata, a stated region: nothing leaves this machine): a ConfigError naming the URI
    and the cause, within seconds (the client's own retries)."""
    import time

    from caviar.errors import ConfigError

    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_EC2_METADATA_DISABLED": "true",
                        "AWS_MAX_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    location = "s3://no-bucket/caviar/exp?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    assert storage.join(location, "a", "b") == ("s3://no-bucket/caviar/exp/a/b?endpoint_override=127.0.0.1:9&"
                                                "scheme=http&region=us-east-1")  # the query stays at the end
    begin = time.perf_counter()
    with pytest.raises(ConfigError, match=r"s3://no-bucket/caviar/exp.*: the storage cannot be reached \(.*\); "
                                          "check the URI"):
        storage.write_text(storage.join(location, "x"), "t")
    assert time.perf_counter() - begin < 60
