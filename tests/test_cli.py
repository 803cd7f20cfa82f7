"""Command-line checks that must fail before anything starts."""

import pytest

from gcfl.cli import main


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["run", "--rounds", "0"], "num-server-rounds"),
        (["run", "--fraction-fit", "1.5"], "fraction-fit"),
        (["run", "--strategy", "fedprox"], "strategy"),
        (["run", "--dataset", "missing/data.npz"], "--dataset"),
        (["run", "--data-dir", "no/such/dir"], "--data-dir"),
        (["run", "--clients", "0"], "--clients"),
        (["run", "--set", "no-such-key=1"], "valid keys"),
        (["run", "--set", "elite=many"], "elite"),
        (["compare", "--strategies", "gcfl,fedprox"], "--strategies"),
        (["compare", "--strategies", "gcfl,gcfl"], "--strategies"),
        (["compare", "--rounds", "0"], "num-server-rounds"),
        (["compare", "--fraction-fit", "0"], "fraction-fit"),
        (["compare", "--fraction-fit", "1.01"], "fraction-fit"),
        (["compare", "--dataset", "nowhere.npz"], "--dataset"),
        (["compare", "--repeats", "0"], "--repeats"),
        (["compare", "--clients", "2"], "elite"),
        (["compare", "--set", "lr-max=0"], "lr-max"),
        (["compare", "--set", "bogus=1"], "valid keys"),
    ],
)
def test_bad_arguments_exit_2_with_a_one_line_error_before_anything_starts(
    argv, named, capsys, tmp_path
):
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert named in error and error.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_config_lists_every_key(capsys):
    from gcfl.config import config_keys

    assert main(["config"]) == 0
    listed = capsys.readouterr().out
    assert all(key in listed for key in config_keys())
