"""cluster/*.yaml against Ray's own schema and preparation, caviar's extra checks (`caviar cluster
check`), the AWS bootstrap against moto's in-process mock, and the shared-storage rule.
Nothing here opens a connection: no AWS, no SSH, no `ray up`."""

from __future__ import annotations

import copy
import re

import pytest
import tomllib
import yaml
from conftest import REPO

from caviar import cli
from caviar.config.loading import load_config
from caviar.errors import ConfigError
from caviar.search import cluster, cluster_files

AWS = REPO / "cluster" / "aws.yaml"
LOCAL = REPO / "cluster" / "local.yaml"


def load(path):
    return yaml.safe_load(path.read_text())


def filled(config: dict) -> dict:
    """The file as a user leaves it: every CHANGE-ME placeholder replaced by a value."""
    return yaml.safe_load(yaml.safe_dump(config).replace("CHANGE-ME", "set"))


def write(tmp_path, config: dict, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def pinned_ray() -> str:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(re.match(r"ray\[[^\]]*\]==(\S+)", d).group(1) for d in dependencies if d.startswith("ray["))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)  # file_mounts are relative to where `ray up` runs: the repository root


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_cluster_files_pass_rays_schema_and_preparation(path):
    """Both files survive Ray's prepare_config (defaults, node types) and validate_config (its JSON schema)."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(load(path))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_aws_file_keeps_the_head_free_and_workers_on_spot():
    """CPU-only head with no trial slots; spot GPU workers with min/max and an idle timeout; the Ray
    version pinned as in pyproject.toml; only what installs caviar is shipped; no public dashboard."""
    config = load(AWS)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))
    workers = {n: t for n, t in config["available_node_types"].items() if n != config["head_node_type"]}
    assert workers
    for node_type in workers.values():
        assert node_type["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node_type["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]
        assert node_type["node_config"]["IamInstanceProfile"] == {"Name": "ray-autoscaler-v1"}
    assert config["idle_timeout_minutes"] > 0
    images = [config["docker"][key] for key in ("head_image", "worker_image")]
    assert all(image.startswith(f"rayproject/ray:{pinned_ray()}-") for image in images)
    assert sorted(config["file_mounts"].values()) == ["./README.md", "./caviar", "./pyproject.toml"]  # experiments ship inside caviar/
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    assert "security_group" not in config["provider"]


def test_local_file_pins_ray_and_keeps_the_dashboard_local():
    config = load(LOCAL)
    assert config["provider"]["type"] == "local" and len(config["provider"]["worker_ips"]) == config["max_workers"]
    assert any(f'"ray[default]=={pinned_ray()}"' in c for c in config["setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_shipped_files_only_miss_the_values_a_user_must_set(path, tmp_path):
    """`caviar cluster check` on the file as shipped lists only its CHANGE-ME values; filled in, it passes."""
    with pytest.raises(ConfigError) as error:
        cluster_files.check_cluster_file(path)
    lines = str(error.value).splitlines()[1:]
    assert lines and all("CHANGE-ME" in line and "set it" in line for line in lines)
    prepared = cluster_files.check_cluster_file(write(tmp_path, filled(load(path))))
    assert prepared["cluster_name"] == load(path)["cluster_name"]


def _typo(config: dict, section: list, old: str, new: str) -> dict:
    config = copy.deepcopy(config)
    node = config
    for key in section:
        node = node[key]
    node[new] = node.pop(old)
    return config


TYPOS = [
    (AWS, ["provider"], "region", "regoin", "provider.regoin: unknown key (did you mean 'region'?)"),
    (AWS, ["available_node_types", "gpu_1x", "node_config"], "InstanceType", "InstanceTyep",
     "available_node_types.gpu_1x.node_config.InstanceTyep: unknown key (did you mean 'InstanceType'?)"),
    (AWS, ["available_node_types", "gpu_1x", "node_config", "InstanceMarketOptions"], "MarketType", "MarketTyp",
     "node_config.InstanceMarketOptions.MarketTyp: unknown key (did you mean 'MarketType'?)"),
    (AWS, ["available_node_types", "head", "node_config", "BlockDeviceMappings", 0, "Ebs"], "VolumeSize", "VolumeSzie",
     "BlockDeviceMappings[0].Ebs.VolumeSzie: unknown key (did you mean 'VolumeSize'?)"),
    (LOCAL, ["provider"], "worker_ips", "worker_ip", "provider.worker_ip: unknown key (did you mean 'worker_ips'?)"),
]


@pytest.mark.parametrize("path,section,old,new,message", TYPOS, ids=[t[3] for t in TYPOS])
def test_typos_rays_schema_lets_through_are_caught(path, section, old, new, message, tmp_path):
    """A typo inside provider or node_config passes Ray's schema; caviar's check names it and the fix."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _typo(filled(load(path)), section, old, new)
    if path == AWS:  # (the local provider's preparation trips over a missing worker_ips by itself)
        validate_config(prepare_config(copy.deepcopy(config)))  # Ray alone: no complaint
    with pytest.raises(ConfigError) as error:
        cluster_files.check_cluster_file(write(tmp_path, config))
    assert message in str(error.value)


def _edit(config: dict, edit) -> dict:
    config = copy.deepcopy(config)
    edit(config)
    return config


PROBLEMS = {
    "top-level typo": (lambda c: c.update(idle_timeout_minute=c.pop("idle_timeout_minutes")),
                       "Ray's cluster schema, at (top level): Additional properties are not allowed"),
    "other Ray version": (lambda c: c["docker"].update(worker_image="rayproject/ray:2.9.0-py311-gpu"),
                          "Ray 2.9.0 in the cluster file, but caviar pins Ray"),
    "no Ray version": (lambda c: c.pop("docker"), "no Ray version is pinned"),
    "public dashboard": (lambda c: c.pop("head_start_ray_commands"), "--dashboard-host=0.0.0.0 serves the dashboard"),
    "world-open port": (lambda c: c["provider"].update(security_group={"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}),
        "IpPermissions[0]: opens ports 8265-8265 to the whole internet"),
    "whole tree mounted": (lambda c: c["file_mounts"].update({"/home/ubuntu/all": "."}),
                           "file_mounts[/home/ubuntu/all]: . holds"),
    "missing mount": (lambda c: c["file_mounts"].update({"/home/ubuntu/x": "./nope"}), "./nope does not exist"),
}


@pytest.mark.parametrize("name", PROBLEMS)
def test_other_problems_are_reported(name, tmp_path):
    """Ray version drift, a public dashboard or port, a mounted working tree: each named with its fix."""
    edit, message = PROBLEMS[name]
    with pytest.raises(ConfigError) as error:
        cluster_files.check_cluster_file(write(tmp_path, _edit(filled(load(AWS)), edit)))
    assert message in str(error.value)


def test_cluster_check_command(tmp_path, capsys):
    """`caviar cluster check FILE`: exit 0 with a summary, or exit 2 with every problem."""
    good = write(tmp_path, filled(load(AWS)), "good.yaml")
    assert cli.main(["cluster", "check", str(good)]) == 0
    assert "OK, aws cluster 'caviar'" in capsys.readouterr().out
    bad = write(tmp_path, _typo(filled(load(AWS)), ["provider"], "region", "regoin"), "bad.yaml")
    assert cli.main(["cluster", "check", str(bad)]) == 2
    assert "did you mean 'region'?" in capsys.readouterr().err


# ---------------------------------------------------------------- AWS bootstrap, mocked
@pytest.fixture
def mocked_aws(monkeypatch, tmp_path):
    """moto's in-process AWS (no server, no network); fake credentials; HOME in tmp for the SSH key."""
    moto = pytest.importorskip("moto")
    from ray.autoscaler._private.aws import config as aws_config, utils as aws_utils

    fake = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-west-2", "HOME": str(tmp_path)}
    for key, value in fake.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setattr(aws_config.time, "sleep", lambda seconds: None)  # IAM propagation waits
    clear = [aws_utils.client_cache.cache_clear, aws_utils.resource_cache.cache_clear,
             aws_config._get_subnets_or_die.cache_clear]
    for function in clear:
        function()
    with moto.mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        yield
    for function in clear:  # clients bound to the mock must not outlive it
        function()


def test_a_binary_file_or_a_folder_is_not_a_cluster_file(tmp_path, capsys):
    """`caviar cluster check` on a binary file or a folder: one line naming it, exit 2, no traceback."""
    binary = tmp_path / "cluster.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    for path, said in ((binary, "is not a text file"), (tmp_path, "is a folder")):
        assert cli.main(["cluster", "check", str(path)]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err


def test_aws_bootstrap_creates_a_closed_cluster(mocked_aws):
    """What `ray up cluster/aws.yaml` creates before launching anything (Ray's own bootstrap, run in
    process against moto): an instance profile whose role can write S3, used by the head and named by
    the workers; a key pair; subnets in the configured zones; a security group open to the world on
    SSH only, never on the dashboard or Ray's ports."""
    import boto3
    from ray.autoscaler._private.commands import _bootstrap_config

    config = _bootstrap_config(filled(load(AWS)), no_config_cache=True)
    types = config["available_node_types"]
    iam = boto3.client("iam")
    (profile,) = iam.list_instance_profiles()["InstanceProfiles"]
    assert profile["InstanceProfileName"] == "ray-autoscaler-v1"
    (role,) = profile["Roles"]
    policies = {p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]}
    assert "AmazonS3FullAccess" in policies
    assert config["head_node"]["IamInstanceProfile"]["Arn"] == profile["Arn"]
    for name, node_type in types.items():
        if name != "head":
            assert node_type["node_config"]["IamInstanceProfile"]["Name"] == profile["InstanceProfileName"]

    ec2 = boto3.client("ec2", region_name="us-west-2")
    (key,) = ec2.describe_key_pairs()["KeyPairs"]
    assert {t["node_config"]["KeyName"] for t in types.values()} == {key["KeyName"]}
    zones = set(load(AWS)["provider"]["availability_zone"].split(","))
    subnet_ids = {s for t in types.values() for s in t["node_config"]["SubnetIds"]}
    subnets = ec2.describe_subnets(SubnetIds=sorted(subnet_ids))["Subnets"]
    assert subnets and {s["AvailabilityZone"] for s in subnets} <= zones

    group_ids = {g for t in types.values() for g in t["node_config"]["SecurityGroupIds"]}
    (group,) = ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
    assert group["VpcId"] == subnets[0]["VpcId"]
    for rule in group["IpPermissions"]:
        world = {r["CidrIp"] for r in rule["IpRanges"]} | {r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])}
        if world & {"0.0.0.0/0", "::/0"}:
            assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 22, 22)
        else:  # the rest: node to node, inside the group
            assert [p["GroupId"] for p in rule["UserIdGroupPairs"]] == [group["GroupId"]]
    # resources read from the instance types: the head stays at 0 CPUs, the workers bring GPUs
    assert types["head"]["resources"]["CPU"] == 0
    assert types["gpu_1x"]["resources"]["GPU"] == 1 and types["gpu_4x"]["resources"]["GPU"] == 4


# ---------------------------------------------------------------- storage and GPUs on a cluster
def test_storage_rule():
    """Local storage is refused on a multi-node (or autoscaling) cluster unless shared; URIs always pass."""
    assert cluster.storage_problem("s3://bucket/caviar", nodes=5) is None
    assert cluster.storage_problem("gs://bucket/caviar", nodes=1, max_workers=10) is None
    assert cluster.storage_problem("/home/me/results", nodes=1) is None  # one machine
    message = cluster.storage_problem("/home/me/results", nodes=4, fstype="ext4")
    assert "/home/me/results" in message and "4 nodes" in message
    assert "--storage s3://" in message and "--set storage_shared=true" in message
    assert "can add up to 10 workers" in cluster.storage_problem("file:///r", nodes=1, max_workers=10, fstype="xfs")
    assert cluster.storage_problem("/home/me/results", nodes=4, shared=True) is None
    assert cluster.storage_problem("/mnt/lab/results", nodes=4, fstype="nfs4") is None


def test_filesystem_type_reads_the_mount_table(tmp_path):
    assert cluster.filesystem_type("/proc/self") == "proc"
    assert cluster.filesystem_type(str(tmp_path / "not" / "yet")) == cluster.filesystem_type(str(tmp_path))


@pytest.fixture
def cuda13_wheel(monkeypatch):
    """The PyTorch wheel from PyPI, as the nodes install it: a CUDA 13 build (whatever is installed here)."""
    import torch

    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_driver_in_the_comments_must_run_the_wheel(cuda13_wheel, tmp_path, capsys):
    """A file whose comments ask for driver >= 535 (what CUDA 12 images need) while its nodes install
    PyPI's CUDA 13 wheel (driver >= 580) is refused, saying both; with a CUDA 12 wheel installed
    first in setup_commands, 535 is right and the file passes."""
    text = AWS.read_text().replace("CHANGE-ME", "set")
    assert cluster_files.check_cluster_file(write_text(tmp_path, text, "shipped.yaml"))  # says >= 580: fine
    assert cli.main(["cluster", "check", str(tmp_path / "shipped.yaml")]) == 0
    assert "GPU nodes need NVIDIA driver >= 580.65.06 (PyTorch CUDA 13.0 wheel)" in capsys.readouterr().out
    old = write_text(tmp_path, text.replace("driver >= 580", "driver >= 535"), "old.yaml")
    with pytest.raises(ConfigError) as error:
        cluster_files.check_cluster_file(old)
    assert "the comments ask for an NVIDIA driver >= 535, but the PyTorch wheel the nodes install is a CUDA 13.0 " \
           "build, which needs >= 580.65.06" in str(error.value)
    cu126 = "    - pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cu126\n"
    fixed = old.read_text().replace("setup_commands:\n", "setup_commands:\n" + cu126, 1)
    prepared = cluster_files.check_cluster_file(write_text(tmp_path, fixed, "cu126.yaml"))
    assert cluster_files.wheel_cuda(prepared) == "12.6"
    assert "driver >= 525.60.13" in cluster_files.describe_cluster(prepared)


@pytest.mark.parametrize("path", [AWS, LOCAL], ids=["aws", "local"])
def test_gpu_nodes_check_their_driver_at_setup(path, cuda13_wheel, tmp_path):
    """Without `python -m caviar.training.devices` in the setup commands, a GPU node with too old a driver
    would join and fail every trial: the check asks for it."""
    config = filled(load(path))
    for key in ("setup_commands", "worker_setup_commands"):
        config[key] = [c for c in config.get(key, []) if "caviar.training.devices" not in c]
    with pytest.raises(ConfigError,
                       match=r"no setup command runs `python -m caviar.training.devices`.*driver >= 580.65.06"):
        cluster_files.check_cluster_file(write(tmp_path, config))
    config["available_node_types"] = {name: t for name, t in config.get("available_node_types", {}).items()
                                      if name == config.get("head_node_type")}
    if path == AWS:  # a CPU-only cluster needs no driver check
        config["max_workers"] = 0
        cluster_files.check_cluster_file(write(tmp_path, config))


def test_a_cluster_file_with_the_device_checks_old_module_path_still_passes(cuda13_wheel, tmp_path):
    """Cluster files written before the layer folders run `python -m caviar.devices`, which still
    works on the nodes (caviar.moved): the check accepts it."""
    text = AWS.read_text().replace("CHANGE-ME", "set").replace("caviar.training.devices", "caviar.devices")
    assert "-m caviar.devices" in text
    assert cluster_files.check_cluster_file(write_text(tmp_path, text, "before.yaml"))


def write_text(tmp_path, text: str, name: str):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def head_node(monkeypatch, tmp_path):
    """A head node as `ray up cluster/aws.yaml` leaves it: HOME holds the prepared config, the
    cluster has only the head so far (no GPU), its worker types can bring 8 x 1 + 2 x 4 GPUs."""
    import ray

    config = filled(load(AWS))
    config["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 4, "GPU": 1}
    config["available_node_types"]["gpu_4x"]["resources"] = {"CPU": 48, "GPU": 4}
    (tmp_path / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True}])


def test_autoscaling_cluster_counts_the_gpus_it_can_add(head_node):
    """On a fresh autoscaling cluster (no GPU worker yet) gpus_per_trial=auto still means GPU shares,
    and local storage is refused: the trials will run on workers that are not there yet."""
    from caviar.search.connect import check_cluster

    assert cluster.cluster_gpus() == 16
    assert cluster.cluster_gpus(joined=False) == 0  # a private local instance ignores the file
    config = load_config({"resources": {"gpus_per_trial": "auto"}})
    assert check_cluster(config, "s3://bucket/caviar", joined=True) == {"cpu": 1.0, "gpu": 0.25}
    with pytest.raises(ConfigError, match="can add up to 10 workers"):
        check_cluster(config, "/tmp/caviar-results", joined=True)


def test_gpus_a_cluster_can_add_are_asked_of_its_head(ray_session, monkeypatch, tmp_path):
    """A driver on a laptop or behind Ray Client has no ray_bootstrap_config.yaml of its own: the
    head's copy is read by a task on the head, so gpus_per_trial=auto still means GPU shares on a
    cluster with no GPU worker yet. (Here the head is this machine's Ray; the driver's own view of
    the file is hidden, the task in Ray's worker process still reads it.)"""
    from pathlib import Path

    from caviar.search.connect import check_cluster

    config = filled(load(AWS))
    config["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 4, "GPU": 1}
    config["available_node_types"]["gpu_4x"]["resources"] = {"CPU": 48, "GPU": 4}
    on_head = tmp_path / "head-home" / "ray_bootstrap_config.yaml"
    on_head.parent.mkdir()
    on_head.write_text(yaml.safe_dump(config))
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", str(on_head))
    is_file, read_text = Path.is_file, Path.read_text
    monkeypatch.setattr(Path, "is_file", lambda self: False if self == on_head else is_file(self))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: (_ for _ in ()).throw(FileNotFoundError(self))
                        if self == on_head else read_text(self, *a, **k))

    assert ray_session.cluster_resources().get("GPU", 0) == 0
    assert cluster.cluster_gpus(joined=True) == 16
    resources = load_config({"resources": {"gpus_per_trial": "auto"}})
    assert check_cluster(resources, "s3://bucket/caviar", joined=True) == {"cpu": 1.0, "gpu": 0.25}
    with pytest.raises(ConfigError, match="can add up to 10 workers"):
        check_cluster(resources, str(tmp_path / "results"), joined=True)
