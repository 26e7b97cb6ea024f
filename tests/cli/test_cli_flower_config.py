"""One configuration format: the file `codream run --config` reads is the file the Flower app takes.

`codream run` writes the configuration it ran into its run directory (config.toml) and the learning
loop's `FederationConfig` beside it (federation.json); the operator's
``python -m codream.federation.flower app DIR --config FILE`` must turn the same file into the same
`FederationConfig`, and refuse by name any setting a deployment cannot carry.
"""

from __future__ import annotations

import json
import tomllib

import pytest
from click.testing import CliRunner

pytest.importorskip("flwr", reason="the Flower app command needs flwr (pip install codream[flower])")

from codream.cli import main  # noqa: E402
from codream.federation.flower.__main__ import main as flower_main  # noqa: E402
from codream.federation.flower.engine import config_from_dict  # noqa: E402

# Top-level keys and both learning-loop tables, as an operator writes them.
CONFIG = """\
dataset = "digits"
clients = 4
models = ["mlp", "cnn"]
partition = "dirichlet"
alpha = 1.0
samples_per_client = 100
limit_test = 300
validation = 0.2
method = "paper"
rounds = 2
seed = 7
aggregation = "secure"
threshold = 3
graph = "harary"
dream_batch = 16
global_steps = 2
kd_steps = 10
warmup_steps = 30
device = "cpu"
baselines = ["none"]

[dream]
w_tv = 0.0002

[distill]
buffer_size = 64
"""


def app_settings(app_dir):
    text = (app_dir / "pyproject.toml").read_text()
    return tomllib.loads(text)["tool"]["flwr"]["app"]["config"]


def test_the_file_codream_run_reads_and_writes_gives_the_flower_app_the_same_federation(
    tmp_path, fake_engine
):
    config = tmp_path / "run.toml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ran = config_from_dict(json.loads((out / "federation.json").read_text()))
    assert ran.validation == 0.2 and ran.dream.w_tv == 0.0002 and ran.distill.buffer_size == 64

    # The operator's file and the run directory's config.toml both give the deployment that federation.
    for i, source in enumerate((config, out / "config.toml")):
        assert flower_main(["app", str(tmp_path / f"app{i}"), "--config", str(source)]) == 0
        settings = app_settings(tmp_path / f"app{i}")
        assert config_from_dict(json.loads(settings["codream-config"])) == ran
        assert settings["aggregation"] == "secure" and settings["rounds"] == 2
        assert settings["threshold"] == 3 and settings["graph"] == "harary"
        assert settings["corrupt-fraction"] == 0.1
        assert settings["num-nodes"] == 4


@pytest.mark.parametrize(
    ("lines", "name"),
    [
        ('aggregation = "secure"\ndropout = 0.1', "--dropout 0.1"),
        ("threads = 4", "--threads 4"),
        ('privacy_unit = "example"\nepsilon = 4.0', "--epsilon 4"),
        ('aggregation = "secure"\nsecagg_mode = "malicious"', "--secagg-mode malicious"),
    ],
    ids=["dropout", "threads", "example epsilon", "malicious without keys"],
)  # fmt: skip
def test_the_flower_app_refuses_a_setting_it_cannot_carry_by_name(tmp_path, capsys, lines, name):
    config = tmp_path / "run.toml"
    config.write_text(lines + ("" if "baselines" in lines else '\nbaselines = ["none"]') + "\n")
    assert flower_main(["app", str(tmp_path / "app"), "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and name in err[0], err
    assert not (tmp_path / "app").exists()


def test_a_default_run_directory_config_writes_its_app_and_says_what_a_deployment_leaves_out(
    tmp_path, capsys
):
    config = tmp_path / "run.toml"
    config.write_text('baselines = ["local", "centralized"]\njson = true\nimports = ["my_models"]\n')
    assert flower_main(["app", str(tmp_path / "app"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "note: baselines local,centralized: not trained on a deployment" in out
    assert "note: json:" in out
    # The user's modules: the server's own import; each node names them in its own node config.
    assert 'add imports="my_models" to every --node-config' in out
    assert app_settings(tmp_path / "app")["num-nodes"] == 4
    assert app_settings(tmp_path / "app")["imports"] == "my_models"


def test_under_secure_dp_the_app_carries_the_public_noise_multiplier_the_nodes_need(tmp_path, capsys):
    from codream.privacy_plan import PrivacyPlan
    from codream.runconfig import RunConfig, federation_config

    config = tmp_path / "run.toml"
    config.write_text('aggregation = "secure+dp"\nepsilon = 4.0\nbaselines = ["none"]\ndevice = "cpu"\n')
    assert flower_main(["app", str(tmp_path / "app"), "--config", str(config)]) == 0
    rc = RunConfig.from_toml(config)
    z = PrivacyPlan(rc, federation_config(rc)).noise_multiplier
    assert app_settings(tmp_path / "app")["noise-multiplier"] == z
    assert f"noise-multiplier={z!r}" in capsys.readouterr().out  # what every node's own config needs


def test_a_file_of_federation_config_fields_is_not_a_second_format(tmp_path, capsys):
    config = tmp_path / "federation.toml"
    config.write_text("num_clients = 4\nrounds = 2\n[dream]\nbatch_size = 16\n")
    assert flower_main(["app", str(tmp_path / "app"), "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) 'num_clients'" in err and "valid keys are the run flags" in err
    assert not (tmp_path / "app").exists()


def test_the_deployment_guide_s_run_file_writes_its_app_folder(tmp_path):
    import re
    from pathlib import Path

    from codream.runconfig import RunConfig, federation_config

    guide = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text()
    (block,) = re.findall(r"```toml\n# run\.toml\n(.*?)```", guide, flags=re.S)
    config = tmp_path / "run.toml"
    config.write_text(block)
    assert flower_main(["app", str(tmp_path / "app"), "--config", str(config), "--step-timeout", "60"]) == 0
    settings = app_settings(tmp_path / "app")
    rc = RunConfig.from_toml(config)
    assert config_from_dict(json.loads(settings["codream-config"])) == federation_config(rc, device="auto")
    assert settings["aggregation"] == "secure" and settings["step-timeout"] == 60.0
