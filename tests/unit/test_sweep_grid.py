"""The sweep's grid: parsing --grid options, expanding points, and turning a point back into -S assignments."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from kdflow.config import ConfigError, load_params


def test_grid_option_parses_comma_lists_and_bracketed_lists():
    from flows.sweep import parse_grid_option

    assert parse_grid_option("distill.temperature=1,2.5,8") == ("distill.temperature", [1, 2.5, 8])
    assert parse_grid_option("distill.student.hidden=[[32], [64, 64]]") == ("distill.student.hidden", [[32], [64, 64]])
    for bad in ("distill.temperature", "distill.temperature=", "=1,2"):
        with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
            parse_grid_option(bad)


def test_grid_values_are_read_as_dash_s_reads_them():
    """Hydra's grammar, as -S and `dvc exp run -S`: `1e-3` is a number, `yes` a string, sweeps expand."""
    from flows.sweep import parse_grid_option

    assert parse_grid_option("distill.train.lr=1e-3,1e-2") == ("distill.train.lr", [0.001, 0.01])
    assert parse_grid_option("distill.train.optimizer=sgd,'yes'") == ("distill.train.optimizer", ["sgd", "yes"])
    assert parse_grid_option("distill.student.hidden=[32],[64,64]") == ("distill.student.hidden", [[32], [64, 64]])
    assert parse_grid_option("distill.train.epochs=range(1,4)") == ("distill.train.epochs", [1, 2, 3])
    assert parse_grid_option("distill.temperature=4") == ("distill.temperature", [4])
    with pytest.raises(ConfigError) as caught:
        parse_grid_option("distill.temperature=1,[2")
    assert str(caught.value) == ("--grid 'distill.temperature=1,[2': '[' is never closed; expected "
                                 "KEY=V1,V2,... in -S's grammar, e.g. distill.temperature=1,2,4,8")
    with pytest.raises(ConfigError) as caught:
        parse_grid_option("distill.temperature=[]")
    assert str(caught.value) == "--grid 'distill.temperature=[]': no values; expected KEY=V1,V2,..."


def test_grid_points_are_the_product_in_key_order():
    from flows.sweep import grid_points

    points = grid_points({"distill.temperature": [1, 2, 4], "distill.alpha": [0.5, 1.0]})
    assert len(points) == 6
    assert points[:3] == [{"distill.temperature": 1, "distill.alpha": 0.5},
                          {"distill.temperature": 1, "distill.alpha": 1.0},
                          {"distill.temperature": 2, "distill.alpha": 0.5}]


def test_a_grid_over_an_upstream_key_is_refused():
    from flows.sweep import grid_points

    with pytest.raises(ConfigError, match=r"'train_teacher.train.lr': a sweep varies the distill stage only"):
        grid_points({"train_teacher.train.lr": [0.1, 0.01]})


def test_a_point_as_assignments_loads_back_to_the_same_values(tmp_path, tiny_params, write_params):
    from flows.sweep import assignments

    params_path = write_params(tmp_path, tiny_params)
    point = {"distill.temperature": 2, "distill.alpha": 0.25, "distill.student.hidden": [16, 8],
             "distill.train.optimizer": "sgd", "distill.train.lr": 1e-05}
    assert assignments(point) == ["distill.temperature=2", "distill.alpha=0.25", "distill.student.hidden=[16, 8]",
                                  "distill.train.optimizer=sgd", "distill.train.lr=1e-05"]
    params = load_params(params_path, assignments(point))
    assert (params.distill.temperature, params.distill.alpha, params.distill.student.hidden) == (2.0, 0.25, [16, 8])
    assert (params.distill.train.optimizer, params.distill.train.lr) == ("sgd", 1e-05)


def test_every_grid_value_round_trips_through_its_assignment(tmp_path, tiny_params, write_params):
    """The grid reads `--grid` as -S reads a value, and a trial's assignment must give that value back."""
    from flows.sweep import assignments, grid_points, parse_grid_option
    from kdflow.config import apply_overrides, read_yaml

    raw = dict(tiny_params, distill={**tiny_params["distill"], "student": {
        "arch": "custom", "factory": "my_pkg.nets:make_student", "options": {"x": 0}}})
    raw = read_yaml(write_params(tmp_path, raw))
    key, values = parse_grid_option("distill.student.options.x=1,1.5,1e-3,yes,'True','1e-3','a b',null,[1,'2'],"
                                    "{k: v},'it\\'s',''")
    assert values == [1, 1.5, 0.001, "yes", "True", "1e-3", "a b", None, [1, "2"], {"k": "v"}, "it's", ""]
    for point in grid_points({key: values}):
        read_back = apply_overrides(raw, assignments(point))["distill"]["student"]["options"]["x"]
        assert read_back == point[key] and type(read_back) is type(point[key])


def test_cli_rejects_a_misspelt_grid_key_before_starting_anything(tmp_path, tiny_params, write_params):
    from cli.main import app

    params_path = write_params(tmp_path, tiny_params)
    result = CliRunner().invoke(app, ["sweep", "--params", str(params_path), "--root", str(tmp_path),
                                      "--grid", "distill.temprature=1,2"])
    assert result.exit_code == 1
    assert "unknown key 'distill.temprature'" in result.output
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "mlflow.db").exists()


def test_each_trial_writes_its_students_and_resume_state_in_its_own_directory(tmp_path) -> None:
    """Trials run in parallel and train students of the same names: nothing they write may be shared."""
    from flows.sweep import TrialPaths
    from kdflow.layout import ProjectPaths

    project = ProjectPaths.at(tmp_path)
    trials = [TrialPaths(project.root, project.root / "sweeps" / "run" / f"trial-{i:02d}") for i in range(2)]
    for model in ("student_distilled", "student_scratch"):
        written = [(t.checkpoint(model), t.curve(model), t.resume_state(model)) for t in trials]
        for trial, paths in zip(trials, written):
            assert all(path.is_relative_to(trial.trial_dir) for path in paths)
        assert not set(written[0]) & set(written[1])
    assert trials[0].dataset_card == project.dataset_card  # the project's data, read by every trial
    assert trials[0].checkpoint("teacher") == project.checkpoint("teacher")  # and its teacher


def test_temperature_alpha_map_keeps_the_best_trial_of_each_cell():
    from flows.sweep import SELECT_BY, temperature_alpha_map

    def trial(temperature, alpha, hidden, accuracy):
        point = {"distill.temperature": temperature, "distill.alpha": alpha, "distill.student.hidden": hidden}
        return {"point": point, "metrics": {SELECT_BY: accuracy}}

    trials = [trial(4, 1.0, [32], 0.80), trial(4, 1.0, [64], 0.85), trial(4, 0.5, [32], 0.70),
              trial(1, 0.5, [64], 0.60), trial(1, 0.5, [32], 0.65)]
    temperatures, alphas, values = temperature_alpha_map(trials)
    assert (temperatures, alphas) == ([1, 4], [0.5, 1.0])
    assert values[0][0] == 0.65 and values[1] == [0.70, 0.85]
    assert math.isnan(values[0][1])  # T=1, α=1 was not in the grid: an empty cell
    assert temperature_alpha_map([{"point": {"distill.temperature": 2}, "metrics": {SELECT_BY: 0.5}}]) is None


def test_sweep_params_are_the_shared_overrides_plus_each_point_in_grid_order(tmp_path, tiny_params, write_params):
    from flows.sweep import sweep_params

    params_path = write_params(tmp_path, tiny_params)
    loaded = sweep_params(params_path, {"distill.temperature": [1, 8], "distill.alpha": [0.5]}, ["seed=7"])
    assert loaded.shared["seed"] == 7 and loaded.shared["distill"] == loaded.trials[0]["distill"] | {
        "temperature": tiny_params["distill"]["temperature"], "alpha": tiny_params["distill"]["alpha"]}
    assert [(t["seed"], t["distill"]["temperature"], t["distill"]["alpha"]) for t in loaded.trials] == [
        (7, 1.0, 0.5), (7, 8.0, 0.5)]
