"""``cluster.yaml`` against Ray's own cluster-config schema and ``ray start``'s own option parser, README's
cluster commands against the CLIs they name, and the repository against committed credentials."""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from importlib.util import find_spec
from pathlib import Path

import click
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.scripts.scripts import cli

from beray.runtime import MALLOC_ARENA_MAX, SYSTEM_CONFIG

ROOT = Path(__file__).parent.parent
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _ray_command(argv: list[str]) -> click.Context:
    """Parse ``ray ARGV...`` with Ray's own click CLI (no command runs); UsageError when it is not valid."""
    command, ctx, i = cli, click.Context(cli), 0
    while isinstance(command, click.Group):
        sub = command.get_command(ctx, argv[i])
        if sub is None:
            raise click.UsageError(f"ray has no command {' '.join(argv[:i + 1])!r}")
        command, i = sub, i + 1
    return command.make_context(" ".join(argv[:i]), argv[i:])


def _start(commands: list[str]) -> tuple[dict[str, str], click.Context]:
    """The variables a start command exports, and its ``ray start`` parsed."""
    line = next(c for c in commands if "ray start" in c)
    env = dict(re.findall(r"(\w+)=(\S+?)[;\s]", line.split("ray start")[0]))
    return env, _ray_command(shlex.split("start" + line.split("ray start", 1)[1]))


def test_cluster_yaml_passes_ray_s_cluster_config_schema():
    config = prepare_config(copy.deepcopy(CLUSTER))  # fills AWS defaults, as `ray up` does
    validate_config(config)  # raises on any field the launcher would refuse
    assert config["provider"]["type"] == "aws"
    gpu = [t for t in config["available_node_types"].values() if t["node_config"]["InstanceType"][:2] in ("g5", "p4")]
    assert gpu and all(t["min_workers"] == 0 < t["max_workers"] for t in gpu)  # GPU nodes come and go with the work
    assert config["idle_timeout_minutes"] > 0


def test_every_node_runs_beray_s_ray_with_its_settings():
    docker = CLUSTER["docker"]
    for image in (docker["image"], docker["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray.__version__}-")  # the Ray beray pins
    assert "~/beray" in CLUSTER["file_mounts"] and any("pip install" in c and "~/beray" in c
                                                        for c in CLUSTER["setup_commands"])
    shared = next(v.split(":")[1] for o in docker["run_options"] if o.startswith("--volume") for v in [o.split()[1]])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        env, start = _start(CLUSTER[key])
        assert env["MALLOC_ARENA_MAX"] == str(MALLOC_ARENA_MAX) and env["RAY_AUTH_MODE"] == "token"
        assert env["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
        assert env["BERAY_RESULTS"].startswith(shared + "/")  # results on the file system every node mounts
        assert env["BERAY_CACHE"].startswith(shared + "/")  # and the generated data its drivers write
        assert start.params["metrics_export_port"]  # the Prometheus endpoint the Grafana dashboard reads
    _, head = _start(CLUSTER["head_start_ray_commands"])
    assert head.params["head"] and head.params["system_config"] == SYSTEM_CONFIG
    assert head.params["dashboard_host"] == "127.0.0.1"  # reached through `ray dashboard`'s SSH tunnel only
    assert "security_group" not in CLUSTER["provider"]  # Ray's own: SSH and the nodes' own traffic only
    assert CLUSTER["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the user's token, not a file here
    copied = next(c for c in CLUSTER["head_start_ray_commands"] if "grafana/dashboards" in c)
    words = copied.split()
    source = words[words.index("cp") + 1]
    assert sorted(ROOT.glob(source.replace("~/beray/", "")))  # the dashboards it copies exist
    assert "mkdir -p" in copied  # into a folder made first: Ray's dashboard may not have made it yet


def _cluster_section_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Run on a cluster", 1)[1].split("\n## Monitoring", 1)[0]
    section += readme.split("## Monitoring", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, re.S)
    return [line.split("  #")[0].strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_every_command_of_readme_s_cluster_section_exists():
    commands = _cluster_section_commands()
    ray_commands = [c for c in commands if c.startswith("ray ")]
    assert {"up", "dashboard", "job", "exec", "rsync-down", "down", "metrics"} <= {c.split()[1] for c in ray_commands}
    for c in ray_commands:
        _ray_command(shlex.split(c)[1:])  # raises click.UsageError for a command or option Ray does not have
    for c in (c for c in commands if "python -m beray." in c):
        tokens = shlex.split(c)
        inner = next((t for t in tokens if t.startswith("python -m ")), None)  # quoted for `ray exec`
        tokens = shlex.split(inner) if inner else tokens
        args = tokens[tokens.index("-m") + 1:]
        assert find_spec(args[0] + ".__main__"), c
        assert all((ROOT / a).is_file() for a in args if a.endswith(".yaml")), c
    assert any("sweeps/gamma.yaml" in c and c.startswith("ray job submit --working-dir .") for c in commands)


def test_a_command_ray_does_not_have_is_caught():
    with pytest.raises(click.UsageError):
        _ray_command(["job", "submit", "--no-such-option", "--", "python"])
    with pytest.raises(click.UsageError):
        _ray_command(["teleport", "cluster.yaml"])


# -- credentials -------------------------------------------------------------------------------------

_SECRETS = {
    "private key": re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED )?PRIVATE KEY-----"),
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}", re.I),
    "Ray auth token file": re.compile(r"(?:^|/)auth_token$"),  # matched against paths
}


def _tracked_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every file but the ignored kinds
        names = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()
                 and not {".git", ".venv", "__pycache__"} & set(p.relative_to(ROOT).parts)]
    return [ROOT / n for n in names]


def _secrets_in(path: Path, text: str) -> list[str]:
    found = [k for k, rx in _SECRETS.items() if k != "Ray auth token file" and rx.search(text)]
    return found + (["Ray auth token file"] if _SECRETS["Ray auth token file"].search(path.as_posix()) else [])


def test_the_patterns_find_what_they_are_for():
    key = "-----BEGIN " + "RSA PRIVATE KEY-----\nMIIE..."
    aws_id, aws_secret = "AKIA" + "ABCDEFGHIJKLMNOP", "aws_secret_access_key = " + "a" * 40
    assert _secrets_in(Path("x.pem"), key) == ["private key"]
    assert _secrets_in(Path("x.py"), f"id = '{aws_id}'") == ["AWS access key id"]
    assert _secrets_in(Path("credentials"), aws_secret) == ["AWS secret access key"]
    assert _secrets_in(Path(".ray/auth_token"), "") == ["Ray auth token file"]
    assert _secrets_in(Path("README.md"), "~/.ray/auth_token and AKIA-like names") == []


@pytest.mark.ray
def test_no_credential_is_committed():
    files = _tracked_files()
    assert ROOT / "cluster.yaml" in files and ROOT / "README.md" in files
    found = {}
    for f in files:
        try:
            text = f.read_text(errors="ignore") if f.stat().st_size < 5_000_000 else ""
        except OSError:
            continue
        if hits := _secrets_in(f.relative_to(ROOT), text):
            found[str(f.relative_to(ROOT))] = hits
    assert not found, f"credentials in the repository: {json.dumps(found)}"
