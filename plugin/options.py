"""The options of a scoring call, each declared once: :class:`ScoreOptions`.

A field of `ScoreOptions` is the one declaration of an option: its name, type, default (from
:mod:`genmetrics.stats.defaults`), validator and one-line help. Everything else derives from it:
`score_samples`' keywords (a test keeps its signature equal to the fields), the options `log_gen_metrics`,
the deferred scorers and the evaluator pass on, the command-line flags and their ``--help``
(:func:`add_option_flags`), and the settings handed to the metric table (:meth:`ScoreOptions.metric_settings`).

Only the standard library and :mod:`genmetrics.stats.defaults` are imported here, so the command line builds
its flags without torch; validators that need the network code import it when they run.
"""
import numbers
from dataclasses import dataclass, field, fields
from typing import Optional

from genmetrics.stats.defaults import (DEFAULT_BATCH_SIZE, DEFAULT_LPIPS_NET, DEFAULT_PRECISION, DEFAULT_PREFIX,
                                       DEFAULT_SEED, DIVERSITY_PAIRS, IS_SPLITS, KID_SUBSET_SIZE, KID_SUBSETS, MODES,
                                       PRECISIONS)

from .cli_checks import positive_int

__all__ = ["ScoreOptions", "OPTION_NAMES", "add_option_flags", "check_option_names", "option_help"]


# ---------------------------------------------------------------------------------------------------
# Validators: (name, value) -> the value to keep, or a ValueError naming the option and the fix


def _positive(name, value):
    """An integer >= 1 (a Python or NumPy integer; bool refused), returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _optional_positive(name, value):
    """None, or an integer >= 1."""
    return None if value is None else _positive(name, value)


def _integer(name, value):
    """Any integer (a Python or NumPy integer; bool refused), returned as int."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _value_range(name, value):
    """None or (low, high) with high > low, as floats (the image normaliser's own check)."""
    from genmetrics.stats.images.image_input import check_value_range

    return check_value_range(value)


def _precision(name, value):
    """One of :data:`~genmetrics.stats.defaults.PRECISIONS` (the fast Inception's own check)."""
    from genmetrics.stats.networks.inception_fast import check_precision

    return check_precision(value)


def _lpips_net(name, value):
    """A backbone LPIPS knows (``alex``, ``vgg``, ``squeeze``)."""
    from genmetrics.stats.networks.lpips import LPIPS_NETS

    if value not in LPIPS_NETS:
        raise ValueError(f"{name} must be one of {sorted(LPIPS_NETS)} ('alex' is the usual one), got {value!r}")
    return value


def _metric_options(name, value):
    """{``<metric>_<option>``: value} naming declared options of the metric table, as a dict."""
    from genmetrics.stats.metric_table import check_options

    return check_options(value)


def _option(default, help, check=None, cli=None, metric=False):
    """A field of :class:`ScoreOptions`.

    help: one line, shown by ``--help`` and ``help(ScoreOptions)``; check: the validator, run when the options
    are built; cli: keyword arguments of ``argparse.add_argument`` for a command that offers the option as a
    flag (None: no flag); metric: the value is a setting of the metric table's comparison.
    """
    return field(default=default, metadata={"help": help, "check": check, "cli": cli, "metric": metric})


# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOptions:
    """Every option of one `score_samples` call (also `log_gen_metrics`' options, the deferred scorers', the
    evaluator's config keys and the command-line flags of the same names).

    Building it validates every field (a ValueError names the option and the accepted values) and keeps the
    normalised value (e.g. `value_range` as floats). Without `metrics`, a metric of the default set whose inputs
    are unavailable is skipped with a warning and a ``<prefix>skipped.<metric>`` tag; a metric named explicitly is
    never skipped: its missing input raises (see :mod:`genmetrics.plugin.scoring`). Each field's meaning and
    default: the list below (``help(ScoreOptions)``), generated from the fields' help. `reference_images` may
    also be a ``genmetrics.registry.datasets.ImageSource``.
    """

    metrics: Optional[tuple] = _option(
        None, "metric names of the table (genmetrics.stats.metric_table.METRICS, docs/metrics.md) (default: "
              "the default set fid, kid, is, ssim, lpips, skipping those whose inputs are unavailable)")
    prefix: str = _option(DEFAULT_PREFIX, "key prefix of every metric, param and tag", cli={})
    value_range: Optional[tuple] = _option(
        None, "(low, high) of float pixel values, e.g. (-1, 1) (default: uint8 0..255 or float 0..1)", _value_range)
    mode: Optional[str] = _option(
        None, "image preprocessing before the Inception (clean, legacy_tensorflow, legacy_pytorch) (default: "
              "the reference's mode, else clean)", cli={"choices": MODES})
    model: object = _option(
        None, "feature extractor module (default: the FID Inception from default weight resolution, or the "
              "DINOv2 / CLIP extractor the reference records)")
    lpips_net: str = _option(DEFAULT_LPIPS_NET, "LPIPS backbone: alex, vgg or squeeze", _lpips_net)
    lpips_backbone_weights: Optional[str] = _option(
        None, "path to the torchvision state dict of the LPIPS backbone (e.g. alexnet-owt-7be5be79.pth), for "
              "air-gapped machines (default: the cache, torch.hub's folder, then download)")
    num_samples: Optional[int] = _option(
        None, "images to score: a sampler callable (sampler(n) or sampler()) is called until it drew them, other "
              "input is cut after them; under a process group each rank draws its share (default: all)",
        _optional_positive)
    batch_size: int = _option(DEFAULT_BATCH_SIZE, "images per network batch", _positive, cli={"type": positive_int})
    device: Optional[str] = _option(None, "torch device of the networks (default: cuda when available, else cpu)",
                                    cli={})
    seed: int = _option(DEFAULT_SEED, "seed of every random draw (KID subsets, diversity pairs, FID-infinity's "
                                      "subsets)", _integer, cli={"type": int}, metric=True)
    allow_mismatch: bool = _option(
        False, "compare even when preprocessing mode, feature extractor, layer or weights differ from the "
               "reference's", cli={"action": "store_true"})
    kid_subsets: int = _option(KID_SUBSETS, "KID's random subsets (mean and std over them)", _positive,
                               cli={"type": positive_int}, metric=True)
    kid_subset_size: int = _option(KID_SUBSET_SIZE, "samples per KID subset (clipped to the sample count)",
                                   _positive, cli={"type": positive_int}, metric=True)
    is_splits: int = _option(IS_SPLITS, "Inception Score splits (mean and std over them)", _positive,
                             cli={"type": positive_int}, metric=True)
    diversity_pairs: int = _option(
        DIVERSITY_PAIRS, "without targets: the seeded random pairs of distinct samples (drawn among the first "
                         "2 x pairs) that SSIM / MS-SSIM / LPIPS diversity averages over", _positive)
    distributed: bool = _option(
        True, "inside an initialised torch.distributed process group every rank calls with its own samples, the "
              "statistics of all ranks are combined and every rank returns the same result (a failure on one "
              "rank raises on every rank); False = this rank's samples only; no effect outside a process group")
    copy_pairs: bool = _option(
        False, "when metric copy flags samples, also build ScoreResult.copy_pairs: each flagged sample beside its "
               "nearest reference image, or a placeholder with that image's index (genmetrics.plugin.copy_grid); "
               "when none can be shown, the reason is warned once and tagged <prefix>skipped.copy_pairs")
    precision: str = _option(
        DEFAULT_PRECISION, f"arithmetic of the FID Inception: {' or '.join(PRECISIONS)}; fp32 is exact, bf16 is the "
                           "opt-in bfloat16 fast form (faster on CPUs with AVX-512-BF16 and on GPUs, FID moves: by "
                           "how much, docs/performance.md)", _precision,
        cli={"choices": PRECISIONS})
    reference_images: object = _option(
        None, "folder, zip or dataset root of the reference's images, for the copy-pairs grid: a reference image "
              "is shown only from there and only when its sha256 is the one the statistics file recorded (paths "
              "written in the file are never opened) (default: the image's index instead)", cli={"metavar": "PATH"})
    metric_options: Optional[dict] = _option(
        None, "the metrics' other options as {'<metric>_<option>': value}, e.g. {'prdc_k': 3, 'copy_threshold': "
              "0.4} (each metric's options and defaults: its entry in the metric table)", _metric_options)

    def __post_init__(self):
        for option in fields(self):
            check = option.metadata["check"]
            if check is not None:
                object.__setattr__(self, option.name, check(option.name, getattr(self, option.name)))

    @classmethod
    def from_keywords(cls, options, allowed=None, caller="score_samples", **fixed):
        """The options `caller` was given as keywords (`options`, plus the `fixed` ones it sets itself).

        Raises TypeError listing the valid names when `options` has a name outside `allowed` (default: every
        option), ValueError when a value is refused (the field's validator)."""
        check_option_names(options, allowed, caller)
        return cls(**options, **fixed)

    def keywords(self):
        """{name: value} of every option (shallow: models and paths are not copied), for ``score_samples(**...)``."""
        return {name: getattr(self, name) for name in OPTION_NAMES}

    def metric_settings(self):
        """The settings of the metric table's comparison: the options marked as metric settings (KID's subsets,
        the IS splits, the seed) and `metric_options`."""
        return metric_settings(self.keywords(), self.metric_options)


OPTION_NAMES = tuple(option.name for option in fields(ScoreOptions))
_FIELDS = {option.name: option for option in fields(ScoreOptions)}
ScoreOptions.__doc__ += "\n    Options:\n\n" + "\n".join(
    f"    - {option.name} (default {option.default!r}): {option.metadata['help']}" for option in fields(ScoreOptions))


def check_option_names(options, allowed=None, caller="score_samples"):
    """Raise TypeError naming the unknown keywords in `options` and the valid ones (`allowed`, default all)."""
    allowed = OPTION_NAMES if allowed is None else tuple(allowed)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"{caller} got unknown option(s) {unknown}; valid: {sorted(allowed)} (see "
                        f"genmetrics.plugin.options.ScoreOptions)")


def metric_settings(values, metric_options=None):
    """{name: value} of the metric-setting options present in `values` (a mapping), merged with `metric_options`
    ({``<metric>_<option>``: value}); what :func:`genmetrics.stats.metric_table.compare` takes."""
    chosen = {name: values[name] for name, option in _FIELDS.items() if option.metadata["metric"] and name in values}
    return {**chosen, **(metric_options or {})}


def option_help(name):
    """The one-line help of option `name`, with its default when it has one worth printing."""
    option = _FIELDS[name]
    default = option.default
    shown = "" if default is None or isinstance(default, bool) else f" (default: {default})"
    return option.metadata["help"] + shown


def add_option_flags(parser, names):
    """Add ``--<name>`` (underscores as dashes) to an argparse `parser` for each option in `names`, with the
    field's default, type or choices and help; ``args.<name>`` is then the option's value."""
    for name in names:
        option = _FIELDS[name]
        if option.metadata["cli"] is None:
            raise ValueError(f"option {name!r} has no command-line form; give it cli=... in ScoreOptions")
        parser.add_argument("--" + name.replace("_", "-"), default=option.default,
                            help=option_help(name).replace("%", "%%"), **option.metadata["cli"])
