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
    from caviar.config import load_config
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
