"""Tests of options declared once (``tasks.options``): the checks of a field, the flags, aliases and --help derived
from it, a subclass that changes a default, the shared OT options, and every task's command line carrying them."""
import argparse
import contextlib
import io
from dataclasses import dataclass

import pytest

from tasks import runner
from tasks.options import Alias, OTOptions, Options, add_arguments, given, option


@dataclass
class Example(Options):
    n: int = option(5, "count", minimum=1)
    rate: float = option(0.5, "rate", positive=True)
    size: int | None = option(None, "size; none: all", minimum=2)
    mode: str = option("a", "mode", choices=("a", "b"))
    scale: float | str = option(1.0, "scale or 'auto'", positive=True, choices=("auto",))
    flag: bool = option(True, "on by default", aliases=(Alias("--off", False, "the same as --no-flag"),))
    tri: bool | None = option(None, "auto, on or off", choices={"auto": None, "on": True, "off": False})


@dataclass
class Changed(Example):
    n: int = 7  # a new default, the base declaration (minimum 1) kept


def _parse(argv, cls=Example, overrides=None):
    p = argparse.ArgumentParser()
    add_arguments(p, cls, overrides or {})
    return given(cls, p.parse_args(argv)), p


def test_fields_are_checked_with_one_wording():
    assert Example(n=3, rate=2).rate == 2.0 and isinstance(Example(rate=2).rate, float)
    for kwargs, words in [(dict(n=0), "n must be an integer >= 1, got 0"), (dict(n=True), "n must be an integer"),
                          (dict(rate=0.0), "rate must be a finite number > 0, got 0.0"),
                          (dict(size=1), "size must be an integer >= 2, got 1"),
                          (dict(mode="c"), "mode must be one of a, b, got 'c'"),
                          (dict(scale="x"), "scale must be a finite number > 0 or 'auto', got 'x'"),
                          (dict(flag=1), "flag must be a bool, got 1")]:
        with pytest.raises(ValueError, match=words):
            Example(**kwargs)
    assert Example(size=None).size is None and Example(scale="auto").scale == "auto"
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        Changed(n=0)


def test_flags_aliases_and_defaults_come_from_the_fields():
    assert _parse([])[0] == {}  # nothing given: nothing set (the budget's and the dataclass' defaults apply)
    got, _ = _parse(["--n", "4", "--rate", "1e-3", "--size", "9", "--mode", "b", "--scale", "auto", "--no-flag",
                     "--tri", "off"])
    assert got == {"n": 4, "rate": 1e-3, "size": 9, "mode": "b", "scale": "auto", "flag": False, "tri": False}
    assert _parse(["--off"])[0] == {"flag": False} and _parse(["--tri", "auto"])[0] == {"tri": None}
    assert Example(**_parse(["--scale", "2"])[0]).scale == 2.0


BAD_FLAGS = {"--n 0": "must be an integer >= 1, got 0", "--n x": "'x' is not an integer",
             "--rate -1": "must be a finite number > 0, got -1", "--mode c": "invalid choice",
             "--scale 0": "must be a finite number > 0 or 'auto', got 0"}


@pytest.mark.parametrize("argv", BAD_FLAGS)
def test_bad_flags_are_refused_with_the_fields_words(argv):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        _parse(argv.split())
    assert f"argument {argv.split()[0]}: {BAD_FLAGS[argv]}" in err.getvalue()


def test_help_shows_the_dataclass_default_and_the_budgets():
    _, p = _parse([], Changed, {"quick": {"n": 2}})
    text = " ".join(p.format_help().split())
    assert "count (default: 7; quick budget: 2)" in text and "--no-flag" in text and "--off" in text


def test_a_subclass_restates_only_the_defaults_it_changes():
    @dataclass
    class Mine(OTOptions):
        mesh_lr: float = 1.0

    assert Mine().mesh_lr == 1.0 and OTOptions().mesh_lr == 8.0
    with pytest.raises(ValueError, match="mesh_lr must be a finite number >= 0"):
        Mine(mesh_lr=-1.0)
    sh, mesh = Mine(straight_through=False, normalize_plan=False).ot_config("sa-sh"), \
        Mine(straight_through=False).ot_config("sa-mesh")
    assert sh.straight_through and not sh.normalize_plan and sh.mesh_lr == 1.0  # MESH's options: sa-mesh only
    assert not mesh.straight_through and mesh.backend is None


@pytest.mark.parametrize("name", ["random_objects", "clevr", "clevrer", "multi_dsprites", "clevrtex"])
def test_every_task_offers_the_shared_options_with_its_defaults(name):
    import importlib

    task = importlib.import_module(f"tasks.{name}.experiment").TASK
    parser = runner.build_parser(task)
    text = " ".join(parser.format_help().split())
    default = task.config()
    for flag in ("--mesh-lr", "--mesh-iters", "--n-iters", "--cost", "--n-sh-iters", "--marginal-input",
                 "--backend"):
        assert flag in text
    assert f"MESH step size (lambda of Eq. 11) (default: {default.mesh_lr})" in text
    plan = "--no-normalize-plan" if default.normalize_plan else "--normalize-plan"
    exp = runner.experiment_from_args(task, parser.parse_args([plan, "--mesh-lr", "3", "--n-iters", "2"]))
    assert exp.config.normalize_plan is not default.normalize_plan
    model = exp.config.model_config("sa-mesh")
    model = model.get("slot_attention", model.get("autoencoder", {}).get("slot_attention", model))
    assert model["ot"]["mesh_lr"] == 3.0 and model["n_iters"] == 2
    assert model["ot"]["normalize_plan"] is not default.normalize_plan
