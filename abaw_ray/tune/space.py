"""Search spaces as YAML data: the schema, its validation, and the Optuna define-by-run space.

    task: va                       # va | expr | au
    features:                      # feature combinations: every visual x every audio
      visual: [face_hog, face_pixels]
      audio: [logmel, wavlm_large, null]   # null: no audio (a visual-only trial)
      combinations:                        # optional: more combinations, listed whole
        - [face_hog, logmel, wavlm_large]  # three modalities (MCTN's hierarchy: two levels)
    parameters:                    # any trial setting (TrialConfig) or model setting
      model: {choice: [attention, mfn, mctn, transformer]}
      lr: {loguniform: [3.0e-4, 3.0e-3]}
      hidden: {choice: [32, 64]}
      dropout: {uniform: [0.0, 0.4]}
      window: {randint: [32, 96]}            # integers, both ends included
      epochs: {value: 15}                    # a constant
      loss_weight: {uniform: [0.01, 0.5], when: {model: mctn}}      # conditional
      gates: {choice: [paper, reference], when: {model: [mfn]}}

Each parameter has exactly one of ``value``, ``choice``, ``uniform``, ``loguniform``,
``randint``, and optionally ``when`` (conditions on parameters listed before it). A malformed
file raises :class:`SearchSpaceError` naming the file and the key.
"""

from __future__ import annotations

import itertools
import math
import typing
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from abaw_ray.features.registry import get_spec, list_extractors
from abaw_ray.models import list_models, model_settings
from abaw_ray.settings import problem
from abaw_ray.tasks import TASKS
from abaw_ray.train.loop import TrialConfig, task_problem

DISTRIBUTIONS = ("value", "choice", "uniform", "loguniform", "randint")
NOT_SEARCHED = ("task", "features", "model_args")  # set by the space's own keys, or internal


class SearchSpaceError(ValueError):
    pass


@dataclass(frozen=True)
class Parameter:
    name: str
    kind: str
    args: Any
    when: dict[str, tuple[Any, ...]]

    def active(self, config: dict[str, Any]) -> bool:
        return all(config.get(k) in allowed for k, allowed in self.when.items())

    @property
    def values(self) -> tuple[Any, ...]:
        """The values a discrete parameter can take (``choice``: its list; ``value``: that one
        value; a string is one value, never its characters); () for a range."""
        if self.kind == "value":
            return (self.args,)
        if self.kind == "choice":
            return tuple(self.args)
        return ()


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    task: str
    visual: tuple[str, ...]
    audio: tuple[str | None, ...]
    parameters: tuple[Parameter, ...]
    extra: tuple[tuple[str, ...], ...] = ()  # combinations listed whole (visual first)

    def alignments(self) -> tuple[str, ...]:
        """The feature alignments its trials can ask for: the bank holds each one's variant."""
        searched = next((p for p in self.parameters if p.name == "alignment"), None)
        return searched.values if searched is not None else (TrialConfig.alignment,)

    def combinations(self, key_of: dict[str, str] | None = None) -> list[str]:
        """Feature combinations as strings (``"face_hog+logmel"``): searchers take strings,
        not lists. ``key_of`` maps extractor names to store keys (``wavlm_large.tiny``)."""
        k = key_of or {}
        product = [
            tuple(n for n in pair if n) for pair in itertools.product(self.visual, self.audio)
        ]
        combos = ["+".join(k.get(n, n) for n in names) for names in (*product, *self.extra)]
        return list(dict.fromkeys(combos))

    @property
    def extractors(self) -> list[str]:
        return sorted({n for n in (*self.visual, *self.audio, *itertools.chain(*self.extra)) if n})

    def with_choice(self, name: str, values: tuple[Any, ...]) -> SearchSpace:
        """This space with ``name`` searched over ``values``, unless the file sets it."""
        if any(p.name == name for p in self.parameters):
            return self
        extra = Parameter(name, "choice", tuple(values), {})
        return replace(self, parameters=(*self.parameters, extra))

    def with_value(self, name: str, value: Any) -> SearchSpace:
        """This space with ``name`` fixed at ``value`` (whatever the file says)."""
        kept = tuple(p for p in self.parameters if p.name != name)
        return replace(self, parameters=(*kept, Parameter(name, "value", value, {})))

    def define_by_run(self, combos: list[str]) -> DefineByRun:
        return DefineByRun(self.parameters, tuple(combos), self.task)

    def grid(self, combos: list[str]) -> list[dict[str, Any]]:
        """The paper's protocol as trial configs: every feature combination x every model the
        space offers, each other searched setting at its default (``default_of``)."""
        model = next((p for p in self.parameters if p.name == "model"), None)
        models = model.values if model is not None and model.values else (TrialConfig.model,)
        rows = []
        for features, name in itertools.product(combos, models):
            config: dict[str, Any] = {"features": features, "task": self.task, "model": name}
            for p in self.parameters:
                if p.name != "model" and p.active(config):
                    config[p.name] = p.args if p.kind == "value" else default_of(p, name)
            rows.append(config)
        return rows


@dataclass(frozen=True)
class DefineByRun:
    """An Optuna define-by-run space (a class, so Tune can pickle the searcher's state):
    suggests every active parameter in file order and returns the constants."""

    parameters: tuple[Parameter, ...]
    combos: tuple[str, ...]
    task: str = "va"

    def __call__(self, trial) -> dict[str, Any]:
        config: dict[str, Any] = {
            "features": trial.suggest_categorical("features", list(self.combos))
        }
        constants: dict[str, Any] = {"task": self.task}
        for p in self.parameters:
            if not p.active({**config, **constants}):
                continue
            if p.kind == "value":
                constants[p.name] = p.args
            elif p.kind == "choice":
                config[p.name] = trial.suggest_categorical(p.name, list(p.args))
            elif p.kind == "uniform":
                config[p.name] = trial.suggest_float(p.name, *p.args)
            elif p.kind == "loguniform":
                config[p.name] = trial.suggest_float(p.name, *p.args, log=True)
            elif p.kind == "randint":
                config[p.name] = trial.suggest_int(p.name, *p.args)
        return constants


def default_of(p: Parameter, model: str) -> Any:
    """A searched setting's default for ``model``: the trial's (``TrialConfig``) or the
    model's own, where the space offers it; else the space's first choice, or its range's
    middle (geometric for ``loguniform``)."""
    trial = {f.name: f.default for f in fields(TrialConfig)}
    settings = model_settings(model)
    default = trial[p.name] if p.name in trial else getattr(settings.get(p.name), "default", None)
    if p.kind == "choice":
        return default if default in p.args else p.args[0]
    low, high = p.args
    if default is not None and low <= default <= high:
        return default
    if p.kind == "loguniform":
        return math.sqrt(low * high)
    return (low + high) // 2 if p.kind == "randint" else (low + high) / 2


def _fail(path: Path, key: str, message: str) -> SearchSpaceError:
    return SearchSpaceError(f"{path}: {key}: {message}")


def _annotations() -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(trial setting -> annotation, model setting -> {model: annotation}): every name a
    space may search."""
    hints = typing.get_type_hints(TrialConfig)
    trial = {f.name: hints[f.name] for f in fields(TrialConfig) if f.name not in NOT_SEARCHED}
    models: dict[str, dict[str, Any]] = {}
    for m in list_models():
        for name, setting in model_settings(m).items():
            models.setdefault(name, {})[m] = setting.annotation
    return trial, models


def _parse_parameter(
    path: Path, name: str, spec: Any, earlier: list[str], task: str = "va"
) -> Parameter:
    key = f"parameters.{name}"
    trial, models = _annotations()
    if name not in trial and name not in models:
        raise _fail(
            path,
            key,
            f"unknown setting; trial settings: {', '.join(sorted(trial))}; model settings: "
            f"{', '.join(sorted(models))}",
        )
    if not isinstance(spec, dict):
        raise _fail(path, key, f"expected a mapping like {{choice: [...]}}, got {spec!r}")
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    extra = [k for k in spec if k not in DISTRIBUTIONS and k != "when"]
    if len(kinds) != 1 or extra:
        raise _fail(
            path,
            key,
            f"needs exactly one of {', '.join(DISTRIBUTIONS)} "
            f"(and optionally 'when'); got {sorted(spec)}",
        )
    kind = kinds[0]
    args = spec[kind]
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise _fail(path, f"{key}.choice", "expected a non-empty list")
    elif kind in ("uniform", "loguniform", "randint"):
        if (
            not isinstance(args, list)
            or len(args) != 2
            or not all(isinstance(a, int | float) and not isinstance(a, bool) for a in args)
        ):
            raise _fail(path, f"{key}.{kind}", f"expected [low, high], got {args!r}")
        low, high = args
        if not low < high:
            raise _fail(path, f"{key}.{kind}", f"low {low} must be below high {high}")
        if kind == "loguniform" and low <= 0:
            raise _fail(path, f"{key}.{kind}", "bounds must be positive")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise _fail(path, f"{key}.{kind}", "bounds must be integers")
        args = (float(low), float(high)) if kind != "randint" else (int(low), int(high))
    annotations = [trial[name]] if name in trial else list(models[name].values())
    if kind in ("uniform", "loguniform"):
        samples = [(args[0] + args[1]) / 2]  # a float between the bounds
    elif kind == "value":
        samples = [args]
    else:  # choice, randint: the values or both ends
        samples = list(args)
    for annotation in annotations:
        for v in samples:
            wrong = problem(name, annotation, v) or task_problem(task, name, v)
            if wrong:
                raise _fail(path, key, wrong.split(": ", 1)[1])
    if name == "model":
        unknown = [m for m in samples if m not in list_models()]
        if unknown:
            raise _fail(path, key, f"unknown models {unknown}; known: {list_models()}")
    when_raw = spec.get("when", {})
    if not isinstance(when_raw, dict):
        raise _fail(path, f"{key}.when", "expected a mapping {parameter: value(s)}")
    when = {}
    for other, allowed in when_raw.items():
        if other not in earlier:
            raise _fail(
                path,
                f"{key}.when.{other}",
                "conditions may only name parameters listed before this one",
            )
        when[other] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    return Parameter(name, kind, tuple(args) if kind == "choice" else args, when)


def _check_model_settings(path: Path, params: list[Parameter]) -> None:
    """Every model setting a space searches is taken by every model that can be picked with
    it (the ``model`` parameter's values, narrowed by the setting's ``when``), and each of
    its values fits each such model's annotation."""
    trial, models = _annotations()
    model = next((p for p in params if p.name == "model"), None)
    pickable = [TrialConfig.model] if model is None else list(model.values)
    for p in params:
        if p.name in trial:
            continue
        chosen = [m for m in pickable if m in p.when.get("model", pickable)]
        for m in chosen:
            if m not in models[p.name]:
                raise _fail(
                    path,
                    f"parameters.{p.name}",
                    f"model {m} takes no {p.name} (its settings: "
                    f"{', '.join(model_settings(m))}); limit it with when: {{model: [...]}}",
                )
            for v in p.values:
                wrong = problem(p.name, models[p.name][m], v)
                if wrong:
                    raise _fail(path, f"parameters.{p.name}", f"model {m}: {wrong}")


def load_search_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise SearchSpaceError(f"{path}: cannot read the search space ({err.strerror})") from err
    except yaml.YAMLError as err:
        first = str(err).strip().splitlines()
        raise SearchSpaceError(f"{path}: not valid YAML ({' '.join(first[-2:])})") from err
    if not isinstance(data, dict):
        raise SearchSpaceError(f"{path}: expected a mapping with task, features, parameters")
    unknown = sorted(set(data) - {"task", "features", "parameters"})
    if unknown:
        raise _fail(path, unknown[0], "unknown top-level key (task, features, parameters)")
    task = data.get("task")
    if task not in TASKS:
        raise _fail(path, "task", f"expected {', '.join(TASKS)}, got {task!r}")
    feats = data.get("features")
    if not isinstance(feats, dict) or not feats.get("visual"):
        raise _fail(path, "features", "expected {visual: [...], audio: [...]}")
    unknown = sorted(set(feats) - {"visual", "audio", "combinations"})
    if unknown:
        raise _fail(path, f"features.{unknown[0]}", "unknown key (visual, audio, combinations)")
    extractors = list_extractors()
    for group in ("visual", "audio"):
        if feats.get(group) is not None and not isinstance(feats[group], list):
            raise _fail(
                path,
                f"features.{group}",
                f"expected a list, e.g. [{feats[group]}], got {feats[group]!r}",
            )
    visual, audio = list(feats["visual"]), list(feats.get("audio") or [None])
    extra = feats.get("combinations") or []
    if not isinstance(extra, list) or not all(isinstance(c, list) and c for c in extra):
        raise _fail(path, "features.combinations", "expected a list of extractor lists")
    for i, combo in enumerate(extra):
        for n in combo:
            if n not in extractors:
                raise _fail(path, f"features.combinations[{i}]", f"unknown extractor {n!r}")
        if get_spec(combo[0]).modality != "visual":
            raise _fail(path, f"features.combinations[{i}]", "the first feature must be visual")
    for group, names, modality in (("visual", visual, "visual"), ("audio", audio, "audio")):
        for n in names:
            if n is None and group == "audio":
                continue
            if n not in extractors:
                raise _fail(path, f"features.{group}", f"unknown extractor {n!r}")
            if get_spec(n).modality != modality:
                raise _fail(path, f"features.{group}", f"{n} is a {get_spec(n).modality} extractor")
    params_raw = data.get("parameters") or {}
    if not isinstance(params_raw, dict):
        raise _fail(path, "parameters", "expected a mapping")
    params: list[Parameter] = []
    for name, spec in params_raw.items():
        params.append(_parse_parameter(path, name, spec, [p.name for p in params], task))
    _check_model_settings(path, params)
    return SearchSpace(
        path, task, tuple(visual), tuple(audio), tuple(params), tuple(tuple(c) for c in extra)
    )


def sample_count_hint(space: SearchSpace) -> float:
    """Size of the discrete part of the space (for messages); inf with continuous ones."""
    n = len(space.visual) * len(space.audio) + len(space.extra)
    for p in space.parameters:
        if p.kind == "choice":
            n *= len(p.args)
        elif p.kind in ("uniform", "loguniform"):
            return math.inf
        elif p.kind == "randint":
            n *= p.args[1] - p.args[0] + 1
    return n
