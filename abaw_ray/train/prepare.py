"""From a corpus root to a feature bank in the object store: the set-up every trial job shares
(extract what the store lacks, then build the bank's shards once, in Ray tasks)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ray

from abaw_ray.data.corpus import Corpus, load_corpus
from abaw_ray.data.synthetic import ensure_default_corpus
from abaw_ray.features.align import ALIGNMENTS
from abaw_ray.features.pipeline import ExtractionConfig, ExtractionReport, extract_features
from abaw_ray.features.store import FeatureStore, store_key
from abaw_ray.tasks import Task
from abaw_ray.train.bank import FeatureBank, build_bank

# What the embedded corpora carry signal in without weights (and the jobs' default there).
EMBEDDED_FEATURES = ("face_hog", "logmel")


@dataclass
class Prepared:
    corpus: Corpus
    store: FeatureStore
    bank: FeatureBank  # the index: splits, labels, statistics, the shards' references
    bank_ref: ray.ObjectRef  # what trials get
    keys: dict[str, str]  # extractor name -> store key
    extraction: ExtractionReport
    embedded: bool
    pseudo_ref: ray.ObjectRef | None = None  # an earlier search's pseudo-labels, if given


def resolve_corpus(data: Path | None, realistic: bool = False) -> tuple[Path, bool]:
    """The corpus root, and whether it is an embedded synthetic one (``data`` absent; the
    realistic one with ``realistic``)."""
    if data is None:
        return ensure_default_corpus(realistic=realistic), True
    return Path(data), False


def prepare(
    data: Path | None,
    store_dir: Path,
    names: Sequence[str],
    task: Task,
    tiny: bool | None = None,
    weights_dir: Path | None = None,
    alignments: Sequence[str] = ALIGNMENTS,
    holdout: float = 0.0,
    seed: int = 0,
    realistic: bool = False,
    holdout_videos: Sequence[str] | None = None,
) -> Prepared:
    """Ray must be initialised. ``tiny`` defaults to True on the embedded corpus; ``holdout``
    and ``seed`` set the validation videos that nothing selects on (``draw_holdout``), or
    ``holdout_videos`` names them (an earlier search's, whose pseudo-labels this one uses)."""
    root, embedded = resolve_corpus(data, realistic)
    tiny = embedded if tiny is None else tiny
    corpus = load_corpus(root)
    store = FeatureStore(store_dir)
    report = extract_features(
        corpus, store, ExtractionConfig(extractors=tuple(names), tiny=tiny, weights_dir=weights_dir)
    )
    if report.unfinished:
        raise RuntimeError(
            f"feature extraction lost {len(report.unfinished)} video(s) with a worker "
            f"({', '.join(report.unfinished[:5])}): rerun to finish them\n{report.summary()}"
        )
    keys = {n: store_key(n, tiny) for n in names}
    bank = build_bank(
        corpus,
        store,
        list(keys.values()),
        task,
        alignments,
        holdout,
        seed,
        holdout_videos=holdout_videos,
    )
    return Prepared(corpus, store, bank, ray.put(bank), keys, report, embedded)
