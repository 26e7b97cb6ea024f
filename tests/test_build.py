"""The library builder: the README's example, your own model and data, one client as the federation
builds it, the validation split and the one config format."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import codream
from codream import RunConfig, build_client, build_federation, build_run
from codream.data import load_dataset, split_validation
from codream.exceptions import ConfigError
from codream.federation import DistillConfig, DreamConfig, FederationConfig

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(autouse=True)
def registries_as_they_were():
    """What a test registers is gone after it: other tests see only the built-in models and data sets."""
    from codream import data, models

    saved = dict(models._REGISTRY), dict(data._REGISTERED), dict(data.CLASS_NAMES)
    yield
    for live, before in zip((models._REGISTRY, data._REGISTERED, data.CLASS_NAMES), saved, strict=True):
        live.clear()
        live.update(before)


TINY = dict(clients=2, models=["mlp"], rounds=1, global_steps=2, kd_steps=2, warmup_steps=3, dream_batch=8,
            limit_test=60, baselines=["none"])  # fmt: skip


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## As a library") :]
    (code,) = re.findall(r"```python\n(.*?)```", section[: section.index("\n## ", 3)], flags=re.S)
    return code


def test_the_readme_example_runs_and_trains_a_registered_model_on_registered_data(capsys):
    code = readme_example()
    assert "register_model" in code and "register_dataset" in code and "build_run" in code
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own example
    run = namespace["run"]
    out = capsys.readouterr().out
    assert "round 1: test" in out and "best round" in out and "local-only" in out
    # The user's architecture really is client 0's model, trained on the user's three classes.
    assert isinstance(run.federation.clients[0].model, nn.Sequential)
    assert run.federation.dataset.num_classes == 3 and run.federation.dataset.input_shape == (3, 8, 8)
    assert len(run.records) == 2 and run.records[-1]["accuracy_mean"] > 0.6  # chance is 1/3
    assert run.best_round()["round"] in (1, 2)


def test_a_registered_torch_dataset_and_model_run_by_name_from_a_toml_file(tmp_path):
    g = torch.Generator().manual_seed(1)
    y = torch.arange(400) % 2
    x = torch.randn(400, 1, 6, 6, generator=g) + 2 * y.view(-1, 1, 1, 1).float()
    codream.register_dataset("two-blobs", TensorDataset(x, y), replace=True)

    class Linear(nn.Module):
        def __init__(self, shape, num_classes):
            super().__init__()
            self.fc = nn.Linear(int(np.prod(shape)), num_classes)

        def forward(self, inputs):
            return self.fc(inputs.flatten(1))

    codream.register_model("linear-test", Linear, replace=True)
    assert "two-blobs" in codream.dataset_names() and "linear-test" in codream.model_names()
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'dataset = "two-blobs"\nmodels = ["linear-test"]\nclients = 2\nrounds = 1\nglobal_steps = 2\n'
        'kd_steps = 2\nwarmup_steps = 30\ndream_batch = 8\nbaselines = ["none"]\n'
    )
    run = build_run(cfg)
    record = run.run_round()
    assert all(isinstance(c.model, Linear) for c in run.federation.clients)
    assert record["accuracy_mean"] > 0.8 and record["val_accuracy_mean"] > 0.8


def test_a_registered_model_with_the_wrong_output_is_refused_when_the_run_is_built():
    codream.register_model("five-logits", lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 5)), replace=True)
    with pytest.raises(ConfigError, match=r"five-logits.*\(2, 5\).*\(2, 10\)"):
        build_run(**{**TINY, "models": ["five-logits"]})
    with pytest.raises(ConfigError, match="built in"):
        codream.register_model("cnn", lambda: nn.Linear(1, 2))
    with pytest.raises(ConfigError, match="registered already"):
        codream.register_model("five-logits", lambda: nn.Linear(1, 2))


@pytest.mark.parametrize(
    ("train", "kwargs", "message"),
    [
        ((torch.randn(10, 1, 4, 4), torch.tensor([0, 1] * 4 + [2, 7])), {"num_classes": 3}, "labels 7"),
        ((torch.randn(10, 4), torch.arange(10) % 2), {}, "expected images"),
        ((torch.randn(10, 1, 4, 4), torch.rand(10)), {}, "labels must be integers"),
        ((torch.randn(10, 1, 4, 4), torch.tensor([0, 2] * 5)), {}, "no training example has class 1"),
    ],
    ids=["label outside the classes", "not images", "float labels", "a missing class"],
)
def test_registering_data_that_is_not_what_it_claims_is_refused(train, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        codream.register_dataset("bad-data", train, **kwargs)
    assert "bad-data" not in codream.dataset_names()


def test_build_client_builds_the_client_the_federation_builds(digits):
    cfg = FederationConfig(num_clients=3, models=("cnn", "mlp", "mlp"), alpha=0.5, seed=4, validation=0.2,
                           dream=DreamConfig(batch_size=8, global_steps=2),
                           distill=DistillConfig(kd_steps=2, warmup_steps=2))  # fmt: skip
    fed = build_federation(cfg, dataset=digits)
    for cid in (0, 2):
        mine, theirs = build_client(cfg, cid, data=digits), fed.clients[cid]
        assert torch.equal(mine.trainer.x_train, theirs.trainer.x_train)
        assert torch.equal(mine.trainer.y_train, theirs.trainer.y_train)
        assert torch.equal(mine.trainer._perm, theirs.trainer._perm)
        assert torch.equal(mine.generator.get_state(), theirs.generator.get_state())
        for (name, a), (_, b) in zip(
            mine.model.state_dict().items(), theirs.model.state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), name
    with pytest.raises(ConfigError, match="outside 0..2"):
        build_client(cfg, 3, data=digits)


def test_the_validation_split_is_seeded_per_class_and_no_client_holds_it(digits):
    a, b = split_validation(digits, 0.1, seed=3), split_validation(digits, 0.1, seed=3)
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(
        a.x_val, split_validation(digits, 0.1, seed=4).x_val
    )
    counts = torch.bincount(digits.y_train, minlength=10)
    assert torch.equal(torch.bincount(a.y_val, minlength=10), torch.round(0.1 * counts.double()).long())
    assert len(a.y_train) + len(a.y_val) == len(digits.y_train)
    assert split_validation(digits, 0.0) is digits and split_validation(a, 0.1) is a
    with pytest.raises(ConfigError, match="validation fraction"):
        split_validation(digits, 1.0)

    fed = build_federation(FederationConfig(num_clients=2, models=("mlp",), validation=0.1), dataset=digits)
    rows = {tuple(r.tolist()) for r in fed.dataset.x_val.flatten(1)}
    for client in fed.clients:
        assert not rows & {tuple(r.tolist()) for r in client.trainer.x_train.flatten(1)}


def test_the_best_round_is_selected_on_validation_and_reports_its_test_accuracy():
    from codream.report import summarise, summary_markdown

    records = [
        {"round": 1, "accuracy": [0.9], "accuracy_mean": 0.9, "accuracy_std": 0.0, "val_accuracy_mean": 0.5},
        {"round": 2, "accuracy": [0.7], "accuracy_mean": 0.7, "accuracy_std": 0.0, "val_accuracy_mean": 0.8},
    ]
    s = summarise({"rounds": 2}, records)
    assert s["best_round"] == 2 and s["best_round_accuracy_mean"] == 0.7
    assert s["best_round_selected_on"] == "validation" and s["best_round_val_accuracy_mean"] == 0.8
    assert "selected on the validation split (80.00%): test accuracy 70.00%" in summary_markdown(s, records)


def test_a_run_records_validation_and_warm_up_accuracy_and_picks_its_best_round_on_validation():
    run = build_run(**{**TINY, "rounds": 2})
    assert run.run() == run.records
    first, second = run.records
    assert len(first["val_accuracy"]) == 2 and first["val_accuracy_mean"] == pytest.approx(
        np.mean(first["val_accuracy"])
    )
    assert len(first["warmup_accuracy"]) == 2 and "warmup_accuracy" not in second
    # The warm-up point is each client's model right after its warm-up: a fresh client warmed the same way.
    alone = build_client(run.config, 1)
    alone.warm_up()
    assert first["warmup_accuracy"][1] == pytest.approx(
        alone.evaluate(run.federation.x_test, run.federation.y_test)
    )
    assert run.best_round() is max(run.records, key=lambda r: r["val_accuracy_mean"])
    with pytest.raises(ConfigError, match="planned 2 rounds"):
        run.run_round()


def test_measuring_the_run_changes_none_of_its_numbers(digits):
    """The validation and warm-up evaluations train nothing and draw nothing: the engine's numbers stay."""
    run = build_run(**TINY)
    record = run.run_round()
    plain = build_federation(run.federation_config, dataset=load_dataset("digits", limit_test=60, seed=0))
    assert record["accuracy"] == list(plain.run_round().accuracies)


def test_one_config_format_round_trips_and_reaches_every_learning_setting(tmp_path):
    rc = RunConfig.from_dict({**TINY, "dream": {"w_tv": 0.001}, "distill": {"student": "mlp"}})
    path = tmp_path / "c.toml"
    path.write_text(rc.to_toml())
    again = RunConfig.from_toml(path)
    assert again == rc and again.baselines == ()
    fed = codream.build.federation_config(again)
    assert fed.dream.w_tv == 0.001 and fed.distill.student == "mlp" and fed.validation == 0.1
    with pytest.raises(
        ConfigError, match=r"\[dream\] global_steps: set it with the top-level key 'global_steps'"
    ):
        RunConfig.from_dict({"dream": {"global_steps": 3}})
    with pytest.raises(ConfigError, match=r"\[distill\] nonsense: not a DistillConfig field"):
        RunConfig.from_dict({"distill": {"nonsense": 1}})
    with pytest.raises(ConfigError, match="key 'clients' must be an integer, got 2.5"):
        build_run(clients=2.5)
    with pytest.raises(ConfigError, match="fedavg needs one shared architecture"):
        RunConfig.from_dict({"models": ["cnn", "mlp"], "baselines": ["fedavg"]})


def test_a_run_directory_plots_its_baselines_warm_up_point_and_class_names(tmp_path, monkeypatch):
    import json

    import matplotlib.figure
    from click.testing import CliRunner

    from codream.cli import main

    g = torch.Generator().manual_seed(2)
    y = torch.arange(300) % 3
    x = torch.randn(300, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float()
    codream.register_dataset("shades", (x, y), class_names=["dark", "grey", "light"], replace=True)
    figures = {}
    save = matplotlib.figure.Figure.savefig

    def keep(fig, path, *args, **kwargs):
        ax = fig.axes[0]
        figures[Path(path).name] = {
            "lines": {line.get_label(): list(line.get_xdata()) for line in ax.get_lines()},
            "xlabel": ax.get_xlabel(),
            "yticks": [t.get_text() for t in ax.get_yticklabels()],
        }
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    out = tmp_path / "run"
    args = [
        "run",
        "--dataset",
        "shades",
        "--clients",
        "2",
        "--models",
        "mlp",
        "--rounds",
        "2",
        "--global-steps",
        "2",
        "--kd-steps",
        "2",
        "--warmup-steps",
        "5",
        "--dream-batch",
        "9",
        "--out",
        str(out),
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "baseline local-only: final accuracy" in result.output
    acc = figures["accuracy.png"]
    assert acc["lines"]["local-only (mean)"] == [1, 2] and acc["lines"]["CoDream mean"] == [0, 1, 2]
    assert acc["xlabel"] == "round (0 = after local warm-up)"
    assert [t.split(" (")[0] for t in figures["dreams.png"]["yticks"]] == ["dark", "grey", "light"]
    assert "epsilon.png" not in figures and not (out / "plots" / "epsilon.png").exists()  # no DP: no plot
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_round_selected_on"] == "validation"
    assert summary["baselines"]["local"]["accuracy_mean_per_round"] and summary["warmup_accuracy"]
    assert "val_accuracy_mean" in (out / "metrics.csv").read_text().splitlines()[0]


def test_the_readme_config_file_is_one_that_codream_run_and_build_run_accept(tmp_path):
    text = README.read_text(encoding="utf-8")
    (toml,) = re.findall(r"```toml\n(.*?)```", text, flags=re.S)
    path = tmp_path / "readme.toml"
    path.write_text(toml)
    rc = RunConfig.from_toml(path)
    fed = codream.build.federation_config(rc)
    assert fed.distill.student == "cnn" and fed.num_clients == 8 and rc.aggregation == "secure"


def test_a_hint_for_a_run_without_baselines_names_them_as_the_command_line_takes_them():
    from codream.cli.hints import command_line

    line = command_line(RunConfig.from_dict({"baselines": "none", "validation": 0}))
    assert "--baselines none" in line and "--validation 0.0" in line


def test_a_flower_run_holds_the_validation_split_selects_on_it_and_still_gets_its_baseline(
    tmp_path, monkeypatch
):
    pytest.importorskip("flwr")
    import json

    from click.testing import CliRunner

    from codream.cli import main
    from codream.federation.flower import local

    seen = {}

    def finished(config, **kwargs):
        seen["validation"] = config.validation
        ids = list(range(config.num_clients))
        rounds = [
            {"round": r, "accuracies": [acc] * len(ids), "val_accuracies": [val] * len(ids)}
            for r, (acc, val) in enumerate([(0.9, 0.5), (0.6, 0.7)])
        ]
        common = {"participants": ids, "survivors": ids, "aggregation": {"clipped": 0, "overflowed": 0}}
        return {"rounds": [{**r, **common} for r in rounds]}

    monkeypatch.setattr(local, "run_flower", finished)
    out = tmp_path / "flower"
    args = [
        "run",
        "--engine",
        "flower",
        "--clients",
        "2",
        "--models",
        "mlp",
        "--rounds",
        "2",
        "--no-progress",
        "--warmup-steps",
        "3",
    ]
    args += ["--kd-steps", "2", "--limit-test", "60", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert seen["validation"] == 0.1 and RunConfig.from_toml(out / "config.toml").validation == 0.1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_round_selected_on"] == "validation" and "local" in summary["baselines"]
    # Round 2 is the best on validation; round 1's better test accuracy is not what selects it.
    assert summary["best_round"] == 2 and summary["best_round_accuracy_mean"] == pytest.approx(0.6)


def test_a_config_that_imports_a_plugin_file_runs_its_model_and_data_from_the_command_line(tmp_path):
    import json

    from click.testing import CliRunner

    from codream.cli import main

    plugin = tmp_path / "my_plugin.py"
    plugin.write_text(
        "import torch\nfrom torch import nn\nimport codream\n\n"
        "class Wide(nn.Module):\n"
        "    def __init__(self, shape, num_classes):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(shape[0] * shape[1] * shape[2], num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(x.flatten(1))\n\n"
        "codream.register_model('plugin-wide', Wide, replace=True)\n"
        "y = torch.arange(200) % 2\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(200, 1, 4, 4, generator=g) + 2 * y.view(-1, 1, 1, 1)\n"
        "codream.register_dataset('plugin-data', (x, y), replace=True)\n"
    )
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'imports = ["{plugin}"]\ndataset = "plugin-data"\nmodels = ["plugin-wide"]\nclients = 2\n'
        "rounds = 1\n"
        'global_steps = 2\nkd_steps = 2\nwarmup_steps = 20\ndream_batch = 8\nbaselines = ["none"]\n'
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--config", str(cfg), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text())["final_accuracy_mean"] > 0.8
    missing = CliRunner().invoke(
        main, ["run", "--imports", "no_such_codream_plugin", "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "imports: cannot import 'no_such_codream_plugin'" in missing.output
    assert not (tmp_path / "x").exists()


def test_a_flower_run_hands_the_configs_imports_to_its_server_and_every_node(tmp_path, monkeypatch):
    pytest.importorskip("flwr")
    from click.testing import CliRunner

    from codream.cli import main
    from codream.federation.flower import local

    plugin = tmp_path / "flower_plugin.py"
    plugin.write_text("import codream\n")
    seen = {}

    def finished(config, **kwargs):
        seen.update(kwargs)
        return {"rounds": []}

    monkeypatch.setattr(local, "run_flower", finished)
    args = ["run", "--engine", "flower", "--imports", str(plugin), "--baselines", "none", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "run")])
    assert seen["imports"] == (str(plugin),), result.output


def test_a_run_continued_from_its_state_ends_with_the_unbroken_runs_numbers():
    settings = {**TINY, "rounds": 2, "aggregation": "secure"}
    unbroken = build_run(**settings)
    unbroken.run()
    first = build_run(**settings)
    first.run_round()
    state = first.state_dict()
    resumed = codream.Run(first.config, state=state)
    assert resumed.rounds_done == 1
    last = resumed.run_round()
    assert last["round"] == 2 and last["accuracy"] == unbroken.records[1]["accuracy"]
    assert last["val_accuracy"] == unbroken.records[1]["val_accuracy"]
