"""Checks of Ray cluster files (`caviar cluster check`), before `ray up` spends money.

Ray validates cluster files against a JSON schema that lets any key through inside `provider` and
`node_config`, so `regoin: us-west-2` or `InstanceTyep: g5.xlarge` would only fail (or be silently
ignored) after `ray up` started spending money. The checks here close that gap.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import importlib.metadata
import io
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Iterator

import yaml

from caviar.errors import ConfigError

PLACEHOLDER = "CHANGE-ME"  # marks the values a user must edit in cluster/*.yaml

# `provider` keys Ray reads (ray/autoscaler/_private), common and per provider type. Keys that
# start with "_" are Ray's own bookkeeping.
COMMON_PROVIDER_KEYS = {"type", "module", "disable_node_updaters", "disable_launch_config_check",
                        "foreground_node_launch", "use_node_id_as_ip", "worker_liveness_check"}
PROVIDER_KEYS = {
    "aws": {"region", "availability_zone", "aws_credentials", "cache_stopped_nodes", "cloudwatch", "key_pair",
            "security_group", "use_internal_ips"},
    "local": {"head_ip", "worker_ips", "coordinator_address", "external_head_ip", "use_external_head_ip"},
}
# Ray's own node_config keys on AWS, beside the EC2 RunInstances parameters.
RAY_AWS_NODE_KEYS = {"SubnetIds"}
WORLD = {"0.0.0.0/0", "::/0"}


def pinned_ray_version() -> str:
    """The Ray version caviar pins (pyproject.toml), as installed."""
    for requirement in importlib.metadata.requires("caviar") or []:
        match = re.match(r"ray(\[[^\]]*\])?\s*==\s*([\w.]+)", requirement)
        if match:
            return match.group(2)
    import ray

    return ray.__version__


def _unknown(where: str, key: str, known: set[str] | Any) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(known))}"
    return f"{where}.{key}: unknown key ({hint})"


def _provider_problems(provider: dict[str, Any]) -> list[str]:
    kind = provider.get("type")
    if kind not in PROVIDER_KEYS:
        return []  # gcp, azure, ...: caviar knows only the providers it ships files for
    known = COMMON_PROVIDER_KEYS | PROVIDER_KEYS[kind]
    problems = [_unknown("provider", key, known) for key in provider if key not in known and not key.startswith("_")]
    for i, rule in enumerate(provider.get("security_group", {}).get("IpPermissions", [])):
        ranges = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        ranges |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        ssh_only = rule.get("FromPort") == rule.get("ToPort") == 22
        if ranges & WORLD and not ssh_only:
            problems.append(
                f"provider.security_group.IpPermissions[{i}]: opens ports {rule.get('FromPort')}-{rule.get('ToPort')} "
                "to the whole internet; reach the dashboard with `ray dashboard FILE` (SSH) instead"
            )
    return problems


def _shape_problems(value: Any, shape: Any, where: str) -> list[str]:
    """Keys of `value` that botocore's shape (EC2's API model) does not have, recursively."""
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        problems = []
        for key, item in value.items():
            if key in shape.members:
                problems += _shape_problems(item, shape.members[key], f"{where}.{key}")
            else:
                problems.append(_unknown(where, key, shape.members))
        return problems
    if shape.type_name == "list":
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value) for p in _shape_problems(item, shape.member, f"{where}[{i}]")]
    return []  # scalars: EC2 checks the values themselves


def _node_config_problems(config: dict[str, Any]) -> list[str]:
    if config.get("provider", {}).get("type") != "aws":
        return []
    try:
        import botocore.session
    except ImportError:
        return ["checking AWS node_config needs boto3: pip install 'caviar[cluster]' (ray up needs it too)"]
    run_instances = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    problems = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        node_config = {k: v for k, v in (node_type.get("node_config") or {}).items() if k not in RAY_AWS_NODE_KEYS}
        problems += _shape_problems(node_config, run_instances, f"available_node_types.{name}.node_config")
    return problems


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where, value


def _ray_version_problems(config: dict[str, Any], pinned: str) -> list[str]:
    found = set()
    for where, text in _strings(config):
        if "docker" in where or "commands" in where:
            found |= set(re.findall(r"rayproject/ray(?:-ml)?:(\d+\.\d+\.\d+)", text))
            found |= set(re.findall(r"\bray(?:\[[^\]]*\])?==(\d+\.\d+\.\d+)", text))
    if not found:
        return [f"no Ray version is pinned: use a rayproject/ray:{pinned}-... docker image or "
                f"`pip install ray[default]=={pinned}` in setup_commands (Ray's defaults install another version)"]
    return [f"Ray {v} in the cluster file, but caviar pins Ray {pinned} (pyproject.toml); use {pinned} everywhere"
            for v in sorted(found - {pinned})]


def _mount_problems(config: dict[str, Any], root: Path) -> list[str]:
    problems = []
    for remote, local in (config.get("file_mounts") or {}).items():
        source = (root / Path(local).expanduser()).resolve()
        if not source.exists():
            problems.append(f"file_mounts[{remote}]: {local} does not exist (run `ray up` from the repository root)")
            continue
        bad = _first_unshippable(source) if source.is_dir() else None
        if bad:
            problems.append(
                f"file_mounts[{remote}]: {local} holds {bad}; the launcher would hash and copy it. "
                "Mount only what installs caviar (caviar/, pyproject.toml, README.md)"
            )
    return problems


def _first_unshippable(folder: Path) -> str | None:
    """A virtualenv, a git repository or a socket inside `folder`, if any."""
    for parent, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = os.path.join(parent, name)
            if name in (".git", "pyvenv.cfg") or stat.S_ISSOCK(os.lstat(path).st_mode):
                return path
    return None


def _dashboard_problems(config: dict[str, Any]) -> list[str]:
    commands = " ".join(config.get("head_start_ray_commands") or [])
    if re.search(r"--dashboard-host[= ]+(0\.0\.0\.0|::)(\s|$)", commands):
        return ["head_start_ray_commands: --dashboard-host=0.0.0.0 serves the dashboard on every interface; "
                "use --dashboard-host=127.0.0.1 and `ray dashboard FILE` (Ray's AWS default is 0.0.0.0)"]
    return []


# AWS instance families with NVIDIA GPUs (g4dn, g5, g6, p3, p4d, p5, ...).
AWS_GPU_FAMILY = re.compile(r"^(g\d|p\d)")
DEVICE_CHECK = "caviar.training.devices"  # `python -m caviar.training.devices`: fails on a GPU node PyTorch cannot use
OLD_DEVICE_CHECK = "caviar.devices"  # its path before the layer folders, in cluster files written then (caviar.moved)
PYTORCH_INDEX = re.compile(r"download\.pytorch\.org/whl/cu(\d{2})(\d)")
STATED_DRIVER = re.compile(r"driver\b[^>\n]*(?:\n#[^>\n]*)?>=\s*(\d{3})", re.IGNORECASE)


def wheel_cuda(config: dict[str, Any]) -> str | None:
    """The CUDA version of the PyTorch wheel the cluster's nodes install: the one of a
    download.pytorch.org/whl/cuXYZ index named in its commands, else PyPI's (the build installed
    here, when it is a CUDA build); None when unknown."""
    for where, text in _strings(config):
        match = PYTORCH_INDEX.search(text) if "commands" in where else None
        if match:
            return f"{int(match.group(1))}.{match.group(2)}"
    import torch

    return torch.version.cuda


def _has_gpu_nodes(config: dict[str, Any]) -> bool:
    kind = (config.get("provider") or {}).get("type")
    if kind == "local":
        return True  # workstations: caviar's cluster/local.yaml is for machines with GPUs
    for node_type in (config.get("available_node_types") or {}).values():
        if float((node_type.get("resources") or {}).get("GPU", 0)) > 0:
            return True
        if kind == "aws" and AWS_GPU_FAMILY.match(str((node_type.get("node_config") or {}).get("InstanceType", ""))):
            return True
    return False


def _driver_problems(config: dict[str, Any], text: str) -> list[str]:
    """The NVIDIA driver the file asks for (in its comments, for the image or AMI) against the one
    the PyTorch wheel needs; and a setup check so that a node where they disagree fails at `ray up`."""
    from caviar.training.devices import MIN_DRIVER, required_driver

    if not _has_gpu_nodes(config):
        return []
    cuda = wheel_cuda(config)
    need = required_driver(cuda)
    problems = []
    stated = sorted({int(v) for v in STATED_DRIVER.findall(text)})
    if need and stated and stated[0] < int(need.split(".")[0]):
        problems.append(
            f"the comments ask for an NVIDIA driver >= {stated[0]}, but the PyTorch wheel the nodes install is a "
            f"CUDA {cuda} build, which needs >= {need}: use an image or AMI with driver >= {need} and say so, or "
            f"install a CUDA 12 wheel in setup_commands (pip install torch torchvision --index-url "
            f"https://download.pytorch.org/whl/cu126; driver >= {MIN_DRIVER[12]})")
    commands = " ".join(text for where, text in _strings(config) if "setup_commands" in where)
    if DEVICE_CHECK not in commands and f"-m {OLD_DEVICE_CHECK}" not in commands:
        requirement = f" (CUDA {cuda}: driver >= {need})" if need else ""
        problems.append(
            f"no setup command runs `python -m {DEVICE_CHECK}`: add it after caviar's install "
            "(worker_setup_commands, or "
            f"setup_commands), so that a GPU node whose driver cannot run the PyTorch wheel{requirement} fails at "
            "`ray up` instead of failing every trial it is given")
    return problems


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _ray_problems(config: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """Ray's own preparation (defaults, node types) and validation (its JSON schema)."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        # Ray prints notes (file mounts, worker counts) straight to the terminal; the problems it
        # finds come back as exceptions, reported below with the others.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _quiet("ray"):
            prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as error:
        where = ".".join(str(part) for part in error.absolute_path) or "(top level)"
        return [f"Ray's cluster schema, at {where}: {error.message}"], None
    except Exception as error:  # prepare_config aborts with click exceptions, ValueError, KeyError...
        return [f"Ray's config preparation: {getattr(error, 'message', None) or error}"], None
    return [], prepared


def check_cluster_file(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """Every problem in a Ray cluster file at once, as a ConfigError; else Ray's prepared config.

    `root` is where `ray up` will run (relative file_mounts are resolved from it; default: cwd).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cluster file {path} is a folder; pass a Ray cluster YAML file such as cluster/aws.yaml")
    try:
        text = path.read_text()
        config = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"cluster file {path} is not a text file; pass a Ray cluster YAML file such as "
                          "cluster/aws.yaml") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cluster file {path}: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"cluster file {path}: expected a mapping (cluster_name:, provider:, ...)")
    problems = _provider_problems(config.get("provider") or {}) + _node_config_problems(config)
    problems += [f"{where}: still {value!r}; set it (see the comments in the file)"
                 for where, value in _strings(config) if PLACEHOLDER in value]
    problems += _ray_version_problems(config, pinned_ray_version())
    problems += _mount_problems(config, Path(root) if root else Path.cwd())
    problems += _driver_problems(config, text)
    ray_problems, prepared = _ray_problems(config)
    problems += ray_problems + _dashboard_problems(prepared or config)
    if problems:
        raise ConfigError(f"cluster file {path}:\n" + "\n".join(f"  {p}" for p in problems))
    return prepared


def describe_cluster(prepared: dict[str, Any]) -> str:
    """One line about a checked cluster file, for `caviar cluster check`."""
    from caviar.training.devices import required_driver

    cuda = wheel_cuda(prepared) if _has_gpu_nodes(prepared) else None
    need = required_driver(cuda) if cuda else None
    driver = f"; GPU nodes need NVIDIA driver >= {need} (PyTorch CUDA {cuda} wheel)" if need else ""
    return (f"{prepared['provider']['type']} cluster '{prepared['cluster_name']}': node types "
            f"{', '.join(prepared['available_node_types'])} (head: {prepared['head_node_type']}), "
            f"up to {prepared['max_workers']} workers, Ray {pinned_ray_version()}{driver}")
