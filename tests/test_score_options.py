"""Options declared once (issue 20 item 6): `ScoreOptions` is the only declaration of each scoring option; the
signatures of `score_samples` and `log_gen_metrics`, the command-line flags and their help derive from it or are
checked against it, every default is a constant of `genmetrics.stats.defaults`, and scoring's memory of LPIPS loads
has one owner with a reset (issue 20 item 8)."""
import inspect
from dataclasses import fields

import pytest

from genmetrics.plugin import cli_deferred, cli_fid
from genmetrics.plugin.cli import build_parser
from genmetrics.plugin.options import OPTION_NAMES, ScoreOptions, option_help
from genmetrics.stats import defaults

NOT_OPTIONS = ("samples", "reference", "targets", "prompts")  # score_samples' inputs; every other one is an option


def _parameters(function, leave_out=()):
    return {name: p for name, p in inspect.signature(function).parameters.items() if name not in leave_out}


def test_score_samples_signature_is_the_options_fields_in_order_with_their_defaults():
    from genmetrics.plugin.scoring import score_samples

    parameters = _parameters(score_samples, NOT_OPTIONS)
    assert tuple(parameters) == OPTION_NAMES
    for option in fields(ScoreOptions):
        assert parameters[option.name].default == option.default, option.name


def test_log_gen_metrics_takes_every_option_but_copy_pairs_with_the_same_defaults():
    from genmetrics.plugin.log_metrics import SCORE_OPTIONS, log_gen_metrics

    own = _parameters(log_gen_metrics)
    named = [name for name in own if name in OPTION_NAMES]
    assert sorted(named + list(SCORE_OPTIONS)) == sorted(set(OPTION_NAMES) - {"copy_pairs"})
    defaults_of = {option.name: option.default for option in fields(ScoreOptions)}
    assert {name: own[name].default for name in named} == {name: defaults_of[name] for name in named}


def test_every_default_is_a_constant_of_stats_defaults_and_every_option_has_help():
    constants = {name: getattr(defaults, name) for name in defaults.__all__}
    for option in fields(ScoreOptions):
        assert option.metadata["help"].strip() and "\n" not in option.metadata["help"], option.name
        assert f"- {option.name} (default " in ScoreOptions.__doc__  # help(ScoreOptions) lists it
        if option.default is not None and not isinstance(option.default, bool):
            assert option.default in constants.values(), f"{option.name}'s default is not in stats/defaults.py"


def test_building_the_options_validates_and_normalises_each_value():
    opts = ScoreOptions(value_range=(-1, 1), batch_size=8, metric_options={"prdc_k": 3})
    assert opts.value_range == (-1.0, 1.0) and isinstance(opts.value_range[0], float)
    assert opts.metric_settings() == {"seed": 0, "kid_subsets": 100, "kid_subset_size": 1000, "is_splits": 10,
                                      "prdc_k": 3}
    for bad, message in [({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
                         ({"kid_subsets": True}, "kid_subsets must be a positive integer"),
                         ({"num_samples": 2.5}, "num_samples must be a positive integer"),
                         ({"seed": "1"}, "seed must be an integer"),
                         ({"precision": "fp16"}, "precision must be one of 'fp32', 'bf16'"),
                         ({"lpips_net": "alexnet"}, "lpips_net must be one of"),
                         ({"value_range": (1, -1)}, "high > low"),
                         ({"metric_options": {"prdc_kk": 3}}, "unknown metric option")]:
        with pytest.raises(ValueError, match=message):
            ScoreOptions(**bad)


def test_score_samples_refuses_a_bad_option_before_reading_any_sample():
    from genmetrics.plugin.scoring import score_samples

    def sampler(n):
        raise AssertionError("no sample may be drawn")

    with pytest.raises(ValueError, match="diversity_pairs must be a positive integer, got 0"):
        score_samples(sampler, num_samples=4, diversity_pairs=0)


def test_unknown_keywords_are_a_type_error_listing_the_valid_names():
    from genmetrics.plugin.deferred import score_run

    with pytest.raises(TypeError, match=r"unknown option\(s\) \['modee'\]; valid: .*'kid_subsets'"):
        ScoreOptions.from_keywords({"modee": "clean"})
    # the deferred scorer checks its options once, before it talks to the tracking server (none here)
    with pytest.raises(TypeError, match=r"score_run/watch got unknown option\(s\) \['batchsize'\]"):
        score_run("no-run", "no-reference", client=object(), batchsize=8)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        score_run("no-run", "no-reference", client=object(), batch_size=-1)


@pytest.mark.parametrize("command, flags", [(["fid", "a", "b"], cli_fid.OPTION_FLAGS),
                                            (["score", "run", "--reference", "r"], cli_deferred.OPTION_FLAGS),
                                            (["watch", "--experiment", "e", "--reference", "r"],
                                             cli_deferred.OPTION_FLAGS)])
def test_command_line_flags_take_the_options_defaults_and_help(command, flags):
    parser = build_parser()
    args = parser.parse_args(command)
    defaults_of = {option.name: option.default for option in fields(ScoreOptions)}
    assert {name: getattr(args, name) for name in flags} == {name: defaults_of[name] for name in flags}
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command[0]]
    helps = {action.dest: action.help for action in sub._actions}
    assert {name: helps[name] for name in flags} == {name: option_help(name).replace("%", "%%") for name in flags}


def test_command_line_flags_parse_and_check_values(capsys):
    args = build_parser().parse_args(["fid", "a", "b", "--kid-subsets", "7", "--seed", "3", "--allow-mismatch",
                                      "--precision", "bf16", "--mode", "legacy_pytorch"])
    assert (args.kid_subsets, args.seed, args.allow_mismatch, args.precision, args.mode) == (
        7, 3, True, "bf16", "legacy_pytorch")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", "run", "--reference", "r", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err


def test_a_failed_lpips_load_is_remembered_until_the_reset(tmp_path):
    from genmetrics.plugin.scoring import _lpips_model, clear_lpips_models

    missing = tmp_path / "alexnet.pth"
    errors = []
    for _ in range(2):
        with pytest.raises(FileNotFoundError, match="is not a file") as error:
            _lpips_model("alex", "cpu", missing)
        errors.append(error.value)
    assert errors[0] is errors[1]  # remembered: the weight resolution ran once
    clear_lpips_models()
    with pytest.raises(FileNotFoundError) as error:
        _lpips_model("alex", "cpu", missing)
    assert error.value is not errors[0]  # forgotten: resolved again
