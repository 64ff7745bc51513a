"""Options declared once: a task's options are the fields of a dataclass, and their validation, command-line
flags and ``--help`` are derived from the fields (in the spirit of simple-parsing / tyro)::

    @dataclass
    class MyConfig(Options):
        n_train: int = option(64_000, "training examples", minimum=1)
        head: str = option("none", "read-out of the slots", choices=("none", "linear"))

Per field, from its :func:`option` declaration:
    flag        ``--n-train`` from the name (or ``flag``); a bool gets the flag that changes its default
                (``--x`` for a False default, ``--no-x`` for a True one).
    type        from the annotation: int, float, str, bool, or a union of them and None.
    bounds      ``minimum`` (inclusive) for numbers; ``positive`` excludes 0 for floats.
    choices     the allowed values; a Mapping maps command-line words to values (e.g. "auto" -> None).
    aliases     further flags that set the field to a fixed value (``--raw-plan``: normalize_plan False).
    group       the ``--help`` section.

:meth:`Options.__post_init__` checks every field against its declaration (so the error messages exist
once, here, and the command line reports the same ones). A subclass that declares a field again with another
default keeps the declaration of the base class (its help, bounds and choices): that is how a task sets its own
defaults of the shared :class:`OTOptions`.

Known limits: nested dataclasses are not expanded into flags; a field of another type needs ``parse``.
"""
from __future__ import annotations

import argparse
import math
import numbers
import typing
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import kernels
from kernels import check_int
from slots import COSTS, MARGINAL_INPUTS, MESH_OBJECTIVES, OTConfig

__all__ = ["Alias", "Spec", "option", "Options", "OTOptions", "check_value", "add_arguments",
           "given", "int_at_least", "positive_float", "float_at_least_zero", "unit_interval", "BACKENDS",
           "MESH_ONLY"]

BACKENDS = ("auto", *kernels.BACKENDS)


class Alias(NamedTuple):
    """A flag that sets its field to ``value`` (e.g. ``Alias("--raw-plan", False, "the raw plan ...")``)."""

    flag: str
    value: Any
    help: str


@dataclass(frozen=True)
class Spec:
    """The declaration of one option (see the module docstring)."""

    help: str
    minimum: float | None = None
    positive: bool = False
    maximum: float | None = None
    choices: Sequence | Mapping | None = None
    flag: str | None = None
    aliases: tuple[Alias, ...] = ()
    group: str | None = None
    parse: Callable[[str], Any] | None = None


def option(default=MISSING, help: str = "", *, default_factory=MISSING, **spec) -> Any:
    """A dataclass field declared as an option: ``n: int = option(5, "objects per example", minimum=1)``."""
    return field(default=default, default_factory=default_factory, metadata={"option": Spec(help, **spec)})


# ---------------------------------------------------------------------------------------------------
# Validation


def _check_integer(value, name: str, minimum: int | None) -> int:
    """``value`` as an int if it is an integer (not a bool) >= ``minimum`` (``kernels.check_int``)."""
    check_int(value, name, minimum)
    return int(value)


def _number_words(spec: Spec) -> str:
    if spec.minimum is None:
        return "a finite number" + (" > 0" if spec.positive else "")
    return f"a finite number {'>' if spec.positive else '>='} {spec.minimum:g}"


def _check_number(value, name: str, spec: Spec) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    low = spec.minimum if spec.minimum is not None else (0.0 if spec.positive else -math.inf)
    if not ok or value < low or (spec.positive and value == low):
        raise ValueError(f"{name} must be {_number_words(spec)}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{name} must be in ({low:g}, {spec.maximum:g}], got {value!r}")
    return float(value)


def _types(annotation) -> tuple[type, ...]:
    """The types of an annotation: (int,), (float, str, NoneType), ..."""
    args = typing.get_args(annotation)
    return tuple(args) if args else (annotation,)


def _allowed(spec: Spec) -> list:
    return list(spec.choices.values() if isinstance(spec.choices, Mapping) else spec.choices)


def check_value(value, name: str, annotation, spec: Spec):
    """``value`` checked against the declaration (ints become floats for a float option); ValueError naming
    ``name`` otherwise."""
    types = _types(annotation)
    if value is None:
        if type(None) in types:
            return None
        raise ValueError(f"{name} must not be None")
    if spec.choices is not None and float in types:  # a number or one of some words
        if isinstance(value, str) and value in spec.choices:
            return value
        try:
            return _check_number(value, name, spec)
        except ValueError:
            words = " or ".join(map(repr, spec.choices))
            raise ValueError(f"{name} must be {_number_words(spec)} or {words}, got {value!r}") from None
    if spec.choices is not None:
        if value not in _allowed(spec):
            none = "None or " if type(None) in types else ""
            raise ValueError(f"{name} must be {none}one of {', '.join(map(str, spec.choices))}, got {value!r}")
        return value
    if bool in types:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value
    if int in types and float not in types:
        return _check_integer(value, name, None if spec.minimum is None else int(spec.minimum))
    if float in types:
        return _check_number(value, name, spec)
    if str in types and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _declarations(cls) -> dict[str, tuple[Any, Spec]]:
    """{field name: (annotation, Spec)} of the option fields of ``cls``, declarations inherited."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        spec = next((base.__dataclass_fields__[f.name].metadata["option"] for base in cls.__mro__
                     if f.name in getattr(base, "__dataclass_fields__", {})
                     and "option" in base.__dataclass_fields__[f.name].metadata), None)
        if spec is not None:
            out[f.name] = (hints[f.name], spec)
    return out


@dataclass
class Options:
    """Base of an options dataclass: checks every :func:`option` field on construction."""

    def __post_init__(self):
        for name, (annotation, spec) in _declarations(type(self)).items():
            setattr(self, name, check_value(getattr(self, name), name, annotation, spec))

    def train_size(self) -> int | None:
        """Training examples of these options: ``n_train`` where there is one (None: not known here)."""
        return getattr(self, "n_train", None)

    def validate(self, budget) -> None:
        """Raise ValueError for options that do not fit the training budget: by default the training set
        (:meth:`train_size`, where it is known) must hold one batch."""
        n_train = self.train_size()
        if n_train is not None and n_train < budget.batch_size:
            raise ValueError(f"n_train ({n_train}) must be at least one batch ({budget.batch_size})")

    def run_folder(self, budget: str) -> str | None:
        """The default run folder of these options trained at ``budget``; None: ``runs/<task>/<budget>``."""
        return None


# ---------------------------------------------------------------------------------------------------
# The shared options of the optimal-transport variants

_OT = "slot attention and OT options (SA ignores the OT ones)"
_MESH = "SA-MESH options (the MESH variants of App. B and I; other variants ignore them)"
# OTConfig fields that only "sa-mesh" reads; the other variants get OTConfig's defaults.
MESH_ONLY = ("straight_through", "learn_mesh_lr", "mesh_objective", "similarity_alpha", "warm_start_grad")


@dataclass
class OTOptions(Options):
    """The options of slot attention and of ``slots.OTConfig`` that every task offers. A task's config
    subclasses this and declares again a field whose default differs (e.g. ``mesh_lr: float = 1.0``).

    ``ot_config(variant)`` is the :class:`slots.OTConfig` of an attention variant; ``backend`` "auto" is None
    there (the default dispatch).
    """

    n_iters: int = option(3, "slot-attention iterations", minimum=1, group=_OT)
    cost: str | None = option(None, "the OT variants' cost (a key of slots.COSTS); None: the task's own (l2 as "
                                    "the official code)", choices=tuple(COSTS), group=_OT)
    n_sh_iters: int = option(5, "Sinkhorn iterations per plan", minimum=1, group=_OT)
    tau: float = option(1.0, "entropic temperature of Sinkhorn", positive=True, group=_OT)
    cost_scale: float = option(1.0, "factor on the cost (the official scale_cost)", positive=True, group=_OT)
    marginal_scale: float | None = option(None, "total mass of each marginal; None: the number of slots",
                                          positive=True, group=_OT)
    learned_marginals: bool = option(
        True, "the learned marginals of App. A (off: uniform marginals of equal mass)", group=_OT,
        aliases=(Alias("--uniform-marginals", False, "the same as --no-learned-marginals"),))
    marginal_input: str = option("normalized", "what the input-marginal network of App. A sees: the normalized "
                                 "inputs LN(x), as the keys and values, or the raw inputs x",
                                 choices=MARGINAL_INPUTS, group=_OT)
    normalize_plan: bool = option(
        True, "each slot's column of the plan normalized to sum 1 (off: the raw plan, as the official code)",
        group=_OT, aliases=(Alias("--raw-plan", False, "the raw transport plan as attention weights, as the "
                                                       "official code (the same as --no-normalize-plan)"),))
    backend: str = option("auto", "OT kernels: auto = the fused C++ loops on CPU, Triton on CUDA",
                          choices=BACKENDS, group=_OT)
    mesh_lr: float = option(8.0, "MESH step size (lambda of Eq. 11)", minimum=0.0, group=_MESH)
    mesh_iters: int = option(4, "MESH steps (T of Eq. 11)", minimum=0, group=_MESH)
    noise_scale: float = option(1e-3, "std of the noise added to the cost before MESH", minimum=0.0, group=_MESH)
    reuse_uv: bool = option(True, "warm-start each MESH step's Sinkhorn from the previous step's potentials",
                            group=_MESH)
    straight_through: bool = option(True, "pass gradients through the MESH steps unchanged (off: differentiate "
                                          "through them, needed by --mesh-objective learned and "
                                          "--similarity-alpha)", group=_MESH)
    learn_mesh_lr: bool = option(False, "learn the MESH step size, starting at --mesh-lr", group=_MESH)
    mesh_objective: str = option("entropy", "what MESH minimizes: the entropy (Eq. 9) or a learned elementwise "
                                            "objective (App. I)", choices=MESH_OBJECTIVES, group=_MESH)
    similarity_alpha: float = option(0.0, "weight of App. B's similarity regulariser (Eq. 13); 0: off",
                                     minimum=0.0, group=_MESH)
    warm_start_grad: bool = option(False, "the official code's gradient: MESH's warm-start potentials stay on "
                                          "the autograd graph", group=_MESH)

    def ot_config(self, attention: str) -> OTConfig:
        """The :class:`slots.OTConfig` of the attention variant ``attention`` ("sa", "sa-sh", ...)."""
        names = [f.name for f in fields(OTConfig) if f.name != "backend" and hasattr(self, f.name)]
        options = {n: getattr(self, n) for n in names if attention == "sa-mesh" or n not in MESH_ONLY}
        return OTConfig(**options, backend=None if self.backend == "auto" else self.backend)


# ---------------------------------------------------------------------------------------------------
# Command line


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _parser_of(name: str, annotation, spec: Spec) -> Callable[[str], Any]:
    """argparse type of an option: text -> checked value (ArgumentTypeError with the check's message)."""
    types = _types(annotation)

    def parse(text: str):
        if spec.parse is not None:
            value = spec.parse(text)
        elif isinstance(spec.choices, Mapping) and text in spec.choices:
            value = spec.choices[text]
        elif spec.choices is not None and text in spec.choices:
            value = text
        elif int in types and float not in types:
            try:
                value = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        elif float in types:
            try:
                value = float(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        else:
            value = text
        try:
            return check_value(value, name, annotation, spec)
        except ValueError as e:  # the check's words, about the text given
            words = str(e).removeprefix(f"{name} ").rsplit(", got ", 1)[0]
            raise argparse.ArgumentTypeError(f"{words}, got {text}") from None
    return parse


def _default_text(value, overrides: Mapping[str, Any]) -> str:
    def show(v):
        return "none" if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v)
    parts = [f"default: {show(value)}"] + [f"{budget} budget: {show(v)}" for budget, v in overrides.items()]
    return "; ".join(parts)


def add_arguments(parser: argparse.ArgumentParser, cls, overrides: Mapping[str, Mapping[str, Any]] = {}) -> None:
    """Add a flag for every option of ``cls`` (module docstring) to ``parser``. A flag not given leaves its
    field unset in the parsed namespace (see :func:`given`). ``overrides``: budget name -> {field: value}, shown
    next to the dataclass default in ``--help``."""
    groups: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in _declarations(cls):
            continue
        annotation, spec = _declarations(cls)[f.name]
        target = parser if spec.group is None else groups.get(spec.group)
        if target is None:
            target = groups[spec.group] = parser.add_argument_group(spec.group)
        default = f.default if f.default_factory is MISSING else f.default_factory()
        by_budget = {b: o[f.name] for b, o in overrides.items() if f.name in o}
        if bool in _types(annotation) and spec.choices is None:
            flag = spec.flag or f"--{'no-' if default else ''}{_dashed(f.name)}"
            target.add_argument(flag, dest=f.name, action="store_const", const=not default,
                                default=argparse.SUPPRESS, help=f"{spec.help} (default: {'on' if default else 'off'})")
        else:
            plain = spec.choices is not None and float not in _types(annotation)  # argparse checks the word
            kind = dict(choices=list(spec.choices)) if plain else dict(type=_parser_of(f.name, annotation, spec))
            if plain and isinstance(spec.choices, Mapping):
                kind["type"] = _parser_of(f.name, annotation, spec)
                kind["metavar"] = "{" + ",".join(spec.choices) + "}"
                kind["choices"] = _allowed(spec)
            target.add_argument(spec.flag or f"--{_dashed(f.name)}", dest=f.name, default=argparse.SUPPRESS,
                                help=f"{spec.help} ({_default_text(default, by_budget)})", **kind)
        for alias in spec.aliases:
            target.add_argument(alias.flag, dest=f.name, action="store_const", const=alias.value,
                                default=argparse.SUPPRESS, help=alias.help)


def given(cls, args: argparse.Namespace) -> dict[str, Any]:
    """The options of ``cls`` given on the command line parsed into ``args`` (:func:`add_arguments`)."""
    return {name: getattr(args, name) for name in _declarations(cls) if hasattr(args, name)}


def _argparse_type(spec: Spec, annotation=float):
    return _parser_of("value", annotation, spec)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``."""
    return _argparse_type(Spec("", minimum=minimum), int)


positive_float = _argparse_type(Spec("", positive=True))  # argparse type: a finite number > 0
float_at_least_zero = _argparse_type(Spec("", minimum=0.0))  # argparse type: a finite number >= 0
unit_interval = _argparse_type(Spec("", minimum=0.0, positive=True, maximum=1.0))  # argparse type: (0, 1]
