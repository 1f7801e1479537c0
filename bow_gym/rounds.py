"""The method's outer loop: click, filter, adapt, train a segmenter, evaluate; for several rounds.

One round (:func:`run_rounds`):

1. **label**: the clicking agent labels every labelling image with ``clicks_per_image`` clicks in
   :class:`~bow_gym.envs.BetterWorseSegEnv`, learning online from the oracle's answers, starting
   from the previous round's segmenter predictions (empty in round 1). Its pseudo-masks are the
   env's masks after the clicks (working resolution, 128 px by default).
2. **filter** (optional, ``top_k < 1``): keep the best ``top_k`` share of pseudo-masks by a
   quality score from feedback and model signals only (:mod:`bow_gym.pseudo_labels`).
3. **adapt** (optional, ``adapt = true``): train the backbone's adapter with the triplet loss on
   the kept pseudo-masks (:func:`bow_gym.adaptation.adapt_backbone`): q/v LoRA on DINOv2, as
   published, or the feature head that stands in for it on the weight-free ``lab_texture``
   (:mod:`bow_gym.backbones.head`); the next round's clicks propagate with the adapted features.
4. **train**: a fresh segmenter learns from the kept pseudo-masks, then predicts the labelling
   images (the next round's starting masks) and the evaluation images.
5. **evaluate**: starting masks, pseudo-masks and predictions against the ground truth, at the
   images' own resolution, with Dice, IoU and HD95, also after hole filling. Evaluation is the
   only step besides the oracle that reads the ground truth.

Protocols: ``"transductive"`` (the original: every image is labelled, and predictions are
evaluated on the same images) and ``"heldout"`` (a seeded split: the agent labels the training
part, predictions are evaluated on the held-out part).

A run directory holds::

    config.json                resolved configuration (a resumed run must match it)
    metrics.csv, metrics.json  one row per (round, target, fill_holes), with wall times; with
                               empty ground truth among the images also target[non-empty-gt]
                               and target[empty-gt] rows (those images reported apart)
    tb/                        TensorBoard logs (charts/, losses/, eval/)
    round_01/ ...
        labels.npz             ids, pseudo-masks, starting masks, answers, confidences
        clicks.csv             step, round, image_id, click, label, reward
        agent.safetensors      the agent after this round's clicks (+ agent_optimizer.pt)
        quality.csv            signals, score and kept flag per image
        adapter.safetensors    the adapter after this round (adapt = true): LoRA or feature head
        segmenter.safetensors  the segmenter trained this round
        predictions.npz        probabilities (uint8) on labelling and evaluation images
        per_image.csv          per-image metrics; empty_gt = 1 for an empty ground truth
        examples.npz           a few images with every mask, for the qualitative figure
        times.json, done.json  wall time per stage; done.json is written last

Every file is written atomically, and each stage's output marks it done: a killed run resumes
from the last finished stage, without redoing it. A stage file that cannot be read back (cut
short by a full disk or a copy, altered) is a :class:`StageFileError` naming it: delete it to
redo its stage, or start afresh in another folder. All randomness derives from ``seed``, the round
and the stage, so a resumed run gives the same numbers as an uninterrupted one.

Configs are TOML files (:func:`load_config`); named ones ship in ``bow_gym/configs``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bow_gym.datasets.base import Sample, SegmentationDataset
from bow_gym.datasets.io import DatasetError
from bow_gym.io_utils import atomic_path
from bow_gym.io_utils import read_csv as _read_csv
from bow_gym.io_utils import write_csv as _write_csv
from bow_gym.io_utils import write_json as _write_json
from bow_gym.metrics import (
    MATCH_AREA,
    ground_truth_groups,
    ground_truth_label,
    match_area_level,
    probability_level,
    resize_mask,
)
from bow_gym.policy import BatchedLearner, ClickPolicy, OnlineLearner, choose_click, public_info

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PROTOCOLS = ("heldout", "transductive")
TARGETS = ("initial", "pseudo", "prediction")
STARTS = ("prediction", "merged", "previous", "ask")
TRUST_KEYS = ("accepted", "rejected", "untouched")
SEGMENTER_INITS = ("scratch", "previous")
#: Config fields that may change when a run is resumed (they do not change its results).
RESUMABLE_KEYS = frozenset({"rounds", "progress", "tensorboard", "device", "name"})


def config_differences(stored: Mapping[str, Any], config: RoundsConfig
                       ) -> tuple[list[str], list[Any], list[Any]]:
    """The fields (sorted) in which ``config`` differs from a stored config's JSON, except
    :data:`RESUMABLE_KEYS`, which a resumed run may change: ``(fields, stored values, new
    values)``."""
    new = json.loads(json.dumps(asdict(config)))
    differ = sorted(k for k in set(stored) | set(new)
                    if k not in RESUMABLE_KEYS and stored.get(k) != new.get(k))
    return differ, [stored.get(k) for k in differ], [new.get(k) for k in differ]
#: Config fields that were renamed: old name -> new name (refused, naming the new one).
RENAMED_KEYS = {"clicks": "clicks_per_image", "lora": "adapt"}


@dataclass
class RoundsConfig:
    """One multi-round experiment (every field can be set in a TOML config or on the CLI)."""

    name: str = "synthetic"
    """label of the run in tables and figures"""
    dataset: str = "synthetic"
    """data set name (bow_gym.datasets.list_datasets)"""
    root: str | None = None
    """data set folder; $VARS and ~ are expanded"""
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    """extra arguments of the data set"""
    extra_datasets: list[dict[str, Any]] = field(default_factory=list)
    """more data sets joined to the first, each {dataset=, root=, dataset_kwargs=}"""
    protocol: str = "heldout"
    """heldout (label the train part, evaluate on the test part) or transductive (all images)"""
    test_fraction: float = 0.2
    """share of images held out (protocol heldout)"""
    split_seed: int = 0
    """seed of the held-out split"""
    limit: int | None = None
    """use only the first N images (before splitting)"""
    rounds: int = 5
    """rounds of clicks + segmenter training"""
    clicks_per_image: int = 5
    """clicks per image and round (each image's episode: the env's clicks_per_episode)"""
    agent: str = "reinforce"
    """clicking agent, a name of bow_gym.agent_registry that needs no training first:
    reinforce or answer_model (and their variants; they learn online), random, gt or gt_greedy
    (these two read the ground truth: ceilings)"""
    agent_checkpoint: str | None = None
    """start the learning agent from this checkpoint instead of from scratch"""
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    """arguments of the agent's class (ReinforceAgent: policy (unet or patches), lr, temperature,
    online_batch (default 8 here), width, ...; AnswerModelAgent: lr, epsilon, posterior_steps,
    ...)"""
    label_envs: int = 8
    """images labelled in lockstep (one batched forward pass of the agent per click)"""
    backbone: str = "lab_texture"
    """patch-feature backbone (bow_gym.backbones.list_backbones)"""
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    """backbone arguments (e.g. checkpoint= a local DINOv2 weights file)"""
    threshold: float = 0.8
    """cosine-similarity threshold of propagation"""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    """other BetterWorseSegEnv arguments (oracle, on_worse, obs_size, ...)"""
    start: str = "prediction"
    """masks round 2+ clicks start from: prediction (the previous segmenter's, as published),
    merged (that prediction, with every patch an earlier answer verified set to its verified
    label), previous (the previous round's pseudo-mask: keep clicking where it left off), or ask
    (the expert answers one more question per image: is the merged prediction better than the
    previous pseudo-mask? The better one is the start)"""
    carry_evidence: bool = False
    """accumulate the answers' per-patch evidence over rounds: the segmenter's target keeps
    earlier verified labels where this round's answers said nothing"""
    label_trust: dict[str, float] = field(default_factory=dict)
    """per-pixel loss weight of the pseudo-masks by what verified them: accepted (an answer
    "better" covered the pixel), rejected (only a "worse" answer did), untouched (no answer:
    the label echoes the start mask); each in [0, 1], missing ones 1 (uniform, as published)"""
    top_k: float = 1.0
    """share of pseudo-masks the segmenter trains on (1 = all)"""
    quality: str = "feedback"
    """quality score for top_k: feedback, confidence, agreement, combined, or auto (feedback in
    round 1, where there is no earlier segmenter to agree with; agreement from round 2 on)"""
    adapt: bool = False
    """adapt the backbone each round with the triplet loss on the pseudo-masks: q/v LoRA on
    DINOv2 (as published), a feature head on lab_texture (its CPU stand-in)"""
    lora_kwargs: dict[str, Any] = field(default_factory=dict)
    """LoRAConfig arguments (r, alpha, ...) of DINOv2's adapter"""
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    """HeadConfig arguments (hidden, depth, image_width) of lab_texture's feature head"""
    triplet_kwargs: dict[str, Any] = field(default_factory=dict)
    """TripletConfig arguments (steps, margin, ...)"""
    segmenter: str = "light"
    """segmenter preset: light (CPU), hsnet_released (HSNet as its released code trains it) or
    hsnet (as its paper describes it)"""
    segmenter_kwargs: dict[str, Any] = field(default_factory=dict)
    """overrides of the segmenter preset (epochs, size, lr, checkpoint, ...)"""
    segmenter_init: str = "scratch"
    """where round 2+'s segmenter starts training: scratch (its preset's initial weights, each
    round, as published) or previous (the previous round's trained segmenter, trained on)"""
    mask_threshold: float | str = 0.5
    """probability at which the segmenter's output becomes a mask (its scored predictions, the
    next round's start masks, the examples), or match_area: each round, the threshold at which
    its output on the labelling images covers the same share of pixels as the masks it was
    trained on (prior matching; no ground truth; the supervised row matches its ground truth)"""
    fill_holes: bool = True
    """also evaluate every mask after hole filling"""
    examples: int = 8
    """labelling images kept with all their masks for the qualitative figure"""
    feature_cache: str | None = "default"
    """feature cache folder, default ($BOW_GYM_CACHE), or none (memory only; TOML has no null)"""
    seed: int = 0
    """seed of everything (agent, order of images, segmenter)"""
    device: str = "auto"
    """auto, cpu or cuda"""
    progress: bool = True
    """progress bars"""
    tensorboard: bool = True
    """TensorBoard logs in <run>/tb"""

    def __new__(cls, *args: Any, **kwargs: Any):
        # Before the dataclass's __init__, which would only say "unexpected keyword argument".
        _check_renamed(kwargs, cls.__name__)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        from bow_gym.agent_registry import agent_spec, list_agents

        if isinstance(self.feature_cache, str) and self.feature_cache.lower() in ("none", ""):
            self.feature_cache = None
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        buildable = list_agents(buildable=True)
        if self.agent not in buildable:
            known = "needs training first" if self.agent in list_agents() else "is not registered"
            raise ValueError(f"agent must be one of {buildable}, got {self.agent!r} (it {known})")
        for key in ("rounds", "clicks_per_image", "label_envs"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{key} must be an int >= 1, got {v!r}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction!r}")
        if not 0.0 < self.top_k <= 1.0:
            raise ValueError(f"top_k must be a share in (0, 1], got {self.top_k!r}")
        if self.start not in STARTS:
            raise ValueError(f"start must be one of {STARTS}, got {self.start!r}")
        if self.segmenter_init not in SEGMENTER_INITS:
            raise ValueError(f"segmenter_init must be one of {SEGMENTER_INITS}, got "
                             f"{self.segmenter_init!r}")
        if self.mask_threshold != MATCH_AREA:
            probability_level(self.mask_threshold)  # a clear error for anything else
        bad = sorted(set(self.label_trust) - set(TRUST_KEYS))
        if bad:
            raise ValueError(f"label_trust: unknown key(s) {bad}; valid: {list(TRUST_KEYS)}")
        for key, v in self.label_trust.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
                raise ValueError(f"label_trust[{key!r}] must be a number in [0, 1], got {v!r}")
        if self.quality not in ("feedback", "confidence", "agreement", "combined", "auto"):
            raise ValueError("quality must be feedback, confidence, agreement, combined or auto, "
                             f"got {self.quality!r}")
        if self.limit is not None and self.limit < 2:
            raise ValueError(f"limit must be None or >= 2, got {self.limit!r}")
        if self.agent_checkpoint and not agent_spec(self.agent).learns_online():
            raise ValueError(f"agent_checkpoint applies only to agents that learn online, not to "
                             f"{self.agent!r}")
        for item in self.extra_datasets:
            if not isinstance(item, Mapping) or "dataset" not in item:
                raise ValueError(f"each extra_datasets entry needs a 'dataset' key, got {item!r}")


def list_configs() -> list[str]:
    """Names of the configs shipped with the package (``bow_gym/configs/*.toml``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_config(source: str | os.PathLike | None = None, **overrides: Any) -> RoundsConfig:
    """A :class:`RoundsConfig` from a shipped config name, a TOML file, or the defaults.

    Args:
        source: ``None`` (defaults), a name from :func:`list_configs`, or a path to a TOML file
            whose top-level keys are :class:`RoundsConfig` fields.
        **overrides: Fields set on top of the file's values.

    Raises:
        FileNotFoundError: ``source`` is neither a shipped name nor an existing file.
        ValueError: The file is not valid TOML or names an unknown field (listing the valid ones).
    """
    values: dict[str, Any] = {}
    if source is not None:
        path = Path(source)
        if not path.suffix and str(source) in list_configs():
            path = CONFIG_DIR / f"{source}.toml"
        if not path.is_file():
            raise FileNotFoundError(f"no config {str(source)!r}: not a file, and not one of the "
                                    f"shipped configs {list_configs()}")
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from e
        _check_keys(values, str(path))
    _check_keys(overrides, "overrides")
    values.update(overrides)
    return RoundsConfig(**values)


def _check_renamed(values: Mapping[str, Any], where: str) -> None:
    renamed = [f"{old!r} was renamed {new!r}" for old, new in RENAMED_KEYS.items() if old in values]
    if renamed:
        raise ValueError(f"{where}: {'; '.join(renamed)}")


def parse_set(item: str) -> tuple[str, Any]:
    """A ``KEY=VALUE`` override (``--set``): the key, and the value as TOML reads it (numbers,
    booleans, strings, lists, tables; a bare word is a string).

    Raises:
        ValueError: ``item`` has no ``=``.
    """
    key, sep, text = item.partition("=")
    if not sep:
        raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
    text = text.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    return key.strip(), value


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    _check_renamed(values, where)
    valid = [f.name for f in fields(RoundsConfig)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown config key(s) {unknown}; valid keys: {valid}")


def _expand(path: str | None) -> str | None:
    if not path:
        return path
    out = os.path.expanduser(os.path.expandvars(path))
    if "$" in out:
        raise ValueError(f"path {path!r} names an environment variable that is not set; set it "
                         "(e.g. BOW_GYM_SHARED_DATA=../shared/data) or pass --root")
    return out


def _fields(config: RoundsConfig, *names: str) -> str:
    """``name=value`` of some config fields, for error messages."""
    return ", ".join(f"{n}={getattr(config, n)!r}" for n in names)


@contextlib.contextmanager
def _config_error(label: str) -> Iterator[None]:
    """Re-raises an error of the checks inside, prefixed with the config fields they read.

    The checks belong to other modules (data sets, backbones, segmenters, env, agents), whose
    messages say what is wrong with a value but not which config field it came from. Unknown
    keyword arguments arrive as TypeError (or KeyError), which the CLI would print as a
    traceback: they become ValueError. FileNotFoundError, RuntimeError (weights unavailable) and
    DatasetError keep their type, so that callers that tell them apart still can.

    Args:
        label: The config fields, e.g. ``"segmenter='light', segmenter_kwargs={'bogus': 1}"``.
    """
    try:
        yield
    except Exception as e:
        msg = f"config {label}: {e}"
        if isinstance(e, DatasetError):
            raise DatasetError(msg) from e
        if isinstance(e, FileNotFoundError):
            raise FileNotFoundError(msg) from e
        if isinstance(e, RuntimeError):
            raise RuntimeError(msg) from e
        if isinstance(e, ValueError | TypeError | KeyError):
            raise ValueError(msg) from e
        raise


# --------------------------------------------------------------------------- data
class MemoryDataset(SegmentationDataset):
    """A data set held in memory: decoded once, read by every stage of every round."""

    def __init__(self, samples: Sequence[Sample], name: str, has_ground_truth: bool = True):
        self.samples = list(samples)
        self.name = name
        self._has_ground_truth = has_ground_truth
        self._ids = [s.id for s in self.samples]
        self._index = {sid: i for i, sid in enumerate(self._ids)}

    @property
    def ids(self) -> list[str]:
        return self._ids

    @property
    def has_ground_truth(self) -> bool:
        return self._has_ground_truth

    def _load(self, index: int) -> Sample:
        return self.samples[index]

    def index_of(self, sample_id: str) -> int:
        # every stage looks images up by id; a dict keeps that O(1) for 1000 images
        try:
            return self._index[sample_id]
        except KeyError:
            raise KeyError(f"{self.name}: no sample with id {sample_id!r}") from None


def build_datasets(config: RoundsConfig) -> tuple[SegmentationDataset, SegmentationDataset]:
    """The labelling and evaluation data sets of a config (lazy; see :func:`load_in_memory`).

    ``heldout``: the seeded train and test parts. ``transductive``: the whole set, twice.

    Raises:
        ValueError: An unknown data set name, split or argument, or too few images for the
            split; the message names the config field(s).
        FileNotFoundError: A root folder (or its layout) is missing; the message names ``root``.
    """
    from bow_gym.datasets import ConcatDataset, make_dataset

    def one(name: str, root: str | None, kwargs: Mapping[str, Any] | None, label: str
            ) -> SegmentationDataset:
        # The file-based layouts only list their files here: a bad name, root, split or
        # argument fails now, cheaply, before a run writes anything.
        with _config_error(label):
            return make_dataset(name, _expand(root), **dict(kwargs or {}))

    names = ("dataset", "root") + (("dataset_kwargs",) if config.dataset_kwargs else ())
    data = one(config.dataset, config.root, config.dataset_kwargs, _fields(config, *names))
    if config.extra_datasets:
        parts = [(config.dataset, data)] + [
            (e["dataset"], one(e["dataset"], e.get("root"), e.get("dataset_kwargs"),
                               f"extra_datasets[{i}]={dict(e)!r}"))
            for i, e in enumerate(config.extra_datasets)]
        data = ConcatDataset(parts)
    if config.limit is not None and config.limit < len(data):
        data = data.subset(list(range(config.limit)), name=f"{data.name}[:{config.limit}]")
    if config.protocol == "transductive":
        return data, data
    train, test = data.split(config.test_fraction, seed=config.split_seed)
    if not len(train) or not len(test):
        raise ValueError(f"{data.name}: {len(data)} images are too few for a held-out split "
                         f"with test_fraction={config.test_fraction}")
    return train, test


def load_in_memory(dataset: SegmentationDataset, progress: bool = True) -> MemoryDataset:
    """Decode every sample once (a progress bar; about 1 GB for the 1000 Kvasir-SEG images)."""
    from tqdm.auto import tqdm

    if isinstance(dataset, MemoryDataset):
        return dataset
    samples = [dataset[i] for i in tqdm(range(len(dataset)), desc=f"load {dataset.name}",
                                         disable=not progress, leave=False)]
    return MemoryDataset(samples, dataset.name, dataset.has_ground_truth)


# --------------------------------------------------------------------------- small I/O
def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


class StageFileError(ValueError):
    """A file a resumed run reads back (a stage's output) that cannot be used: truncated by a
    killed run or a full disk, or altered. The message names the file and what to do."""


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Re-raises any error of reading a run's own file ``path`` as a :class:`StageFileError`
    that names it and says how to go on (numpy's ``BadZipFile`` names no file)."""
    try:
        yield
    except StageFileError:
        raise
    except Exception as e:
        raise StageFileError(
            f"{path} cannot be read back ({type(e).__name__}: {e}); it was left incomplete or "
            "altered. Delete it to redo its stage when the run resumes, or start afresh in "
            "another folder (--out NEW --no-resume)") from e


def _load_npz(path: Path, keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of a stage's ``.npz``; ``keys`` must be among them.

    Raises:
        StageFileError: Unreadable (e.g. truncated) or an array missing.
    """
    with _reading(path):
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise KeyError(f"arrays {missing} are missing")
        return arrays


def _load_json(path: Path) -> Any:
    """A run's JSON file (``config.json``, a round's ``metrics.json``), its name in errors."""
    with _reading(path):
        return json.loads(path.read_text())


def _load_kept(path: Path, ids: Sequence[str]) -> np.ndarray:
    """Which of ``ids`` the filter stage's ``quality.csv`` kept, one bool each.

    Raises:
        StageFileError: Unreadable, or a row of ``ids`` missing or without a 0/1 ``kept``
            (a truncated table would otherwise keep fewer images without a word).
    """
    with _reading(path):
        kept = {row.get("image_id"): row.get("kept") for row in _read_csv(path)}
        bad = [i for i in ids if kept.get(i) not in ("0", "1")]
        if bad:
            raise ValueError(f"{len(bad)} of its {len(ids)} images have no 0/1 'kept' value "
                             f"(first: {bad[0]!r})")
        return np.array([kept[i] == "1" for i in ids])


def _seed(config: RoundsConfig, round_: int, stage: int) -> int:
    """Independent, reproducible seed per (run seed, round, stage)."""
    return int(np.random.SeedSequence([config.seed, round_, stage]).generate_state(1)[0])


# --------------------------------------------------------------------------- stages
#: Per-patch evidence codes (int8) of :attr:`Labels.evidence`: what the expert's answers say of a
#: patch's label. ``+2``/``-2``: a foreground/background click whose selection held the patch was
#: answered "better" (the expert accepted that label for the whole selection). ``-1``/``+1``: a
#: foreground/background click that would have changed the patch was answered "worse" (weak: the
#: selection as a whole was rejected, so the patch is probably the other label). ``0``: no answer
#: touched the patch, its label only echoes the mask the episode started from. Accepted answers
#: overwrite everything; rejected ones only patches without an accepted answer.
EVIDENCE = {"accepted_fg": 2, "rejected_bg": 1, "none": 0, "rejected_fg": -1, "accepted_bg": -2}


def record_evidence(evidence: np.ndarray, selection: np.ndarray, fg_before: np.ndarray,
                    label: int, accepted: bool, patch_area: int) -> None:
    """Updates one image's ``(P,)`` evidence in place after one answered click (pure).

    Args:
        evidence: ``(P,)`` int8 codes (:data:`EVIDENCE`), updated in place.
        selection: ``(P,)`` bool, the patches the click selected.
        fg_before: ``(P,)`` foreground pixels per patch before the click.
        label: The click's label (1 foreground).
        accepted: Whether the expert answered "better".
        patch_area: Pixels per patch.
    """
    if accepted:
        evidence[selection] = 2 if label else -2
        return
    # Only patches the click would have changed carry information about the rejection.
    changes = selection & ((fg_before < patch_area) if label else (fg_before > 0))
    weak = changes & (np.abs(evidence) < 2)
    evidence[weak] = -1 if label else 1


def _patch_map(values: np.ndarray, grid: tuple[int, int], size: int) -> np.ndarray:
    """``(P,)`` per-patch values -> ``(size, size)`` (each patch's cell filled with its value)."""
    gh, gw = grid
    return np.repeat(np.repeat(values.reshape(gh, gw), size // gh, axis=0), size // gw, axis=1)


def apply_evidence(mask: np.ndarray, evidence: np.ndarray, grid: tuple[int, int],
                   strong_only: bool = True) -> np.ndarray:
    """``mask`` with every patch the evidence verified set to its verified label (pure).

    Args:
        mask: ``(S, S)`` bool mask, ``S`` a multiple of the grid.
        evidence: ``(P,)`` int8 codes (:data:`EVIDENCE`).
        grid: The patch grid.
        strong_only: Use only accepted answers (``+-2``); else also rejected ones (``+-1``).
    """
    ev = _patch_map(evidence, grid, mask.shape[0])
    limit = 2 if strong_only else 1
    out = mask.copy()
    out[ev >= limit] = True
    out[ev <= -limit] = False
    return out


def training_targets(labels: Labels, config: RoundsConfig, grid: tuple[int, int]
                     ) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """The segmenter's masks and per-pixel weights from one round's labels (no ground truth).

    Masks: the pseudo-masks; with ``config.carry_evidence`` earlier rounds' accepted answers
    are applied where this round's answers said nothing. Weights: ``config.label_trust`` per
    evidence class (``None`` when every class has weight 1, i.e. a plain unweighted loss).
    """
    masks = list(labels.pseudo)
    ev_all = labels.evidence_total if config.carry_evidence else labels.evidence
    if config.carry_evidence and ev_all is not None:
        masks = [apply_evidence(m, ev, grid) for m, ev in zip(masks, ev_all, strict=True)]
    trust = {k: float(config.label_trust.get(k, 1.0)) for k in TRUST_KEYS}
    if all(v == 1.0 for v in trust.values()) or ev_all is None:
        return masks, None
    table = np.array([trust["accepted"], trust["rejected"], trust["untouched"],
                      trust["rejected"], trust["accepted"]], np.float32)  # codes -2..2
    weights = [_patch_map(table[ev.astype(np.int64) + 2], grid, m.shape[0])
               for m, ev in zip(masks, ev_all, strict=True)]
    return masks, weights


@dataclass
class Labels:
    """What one round of clicking produced (working resolution)."""

    ids: list[str]
    pseudo: np.ndarray  # (N, S, S) bool
    initial: np.ndarray  # (N, S, S) bool
    rewards: np.ndarray  # (N, clicks) int8
    labels: np.ndarray  # (N, clicks) int8, 1 = foreground click
    confidence: np.ndarray  # (N, clicks) float32, NaN where the agent has none
    #: (N, P) int8 per patch: what this round's answers say of its label (:data:`EVIDENCE`)
    evidence: np.ndarray | None = None
    #: (N, P) int8: the same accumulated over this and earlier rounds (later rounds win)
    evidence_total: np.ndarray | None = None
    #: (N,) int8: with ``start = "ask"``, the answer to "is the merged prediction better than
    #: the previous pseudo-mask?" (+1 / -1; 0 where nothing was asked)
    start_answers: np.ndarray | None = None

    def save(self, path: Path) -> None:
        extra = {}
        if self.evidence is not None:
            extra["evidence"] = self.evidence
        if self.evidence_total is not None:
            extra["evidence_total"] = self.evidence_total
        if self.start_answers is not None:
            extra["start_answers"] = self.start_answers
        _save_npz(path, ids=np.array(self.ids), pseudo=self.pseudo, initial=self.initial,
                  rewards=self.rewards, labels=self.labels, confidence=self.confidence, **extra)

    @classmethod
    def load(cls, path: Path) -> Labels:
        """The labels a round saved.

        Raises:
            StageFileError: Unreadable, an array missing, or arrays of different lengths.
        """
        names = ("ids", "pseudo", "initial", "rewards", "labels", "confidence")
        z = _load_npz(path, names)
        lengths = {k: len(z[k]) for k in names}
        if len(set(lengths.values())) != 1:
            with _reading(path):
                raise ValueError(f"its arrays have different lengths: {lengths}")
        return cls([str(i) for i in z["ids"]], z["pseudo"], z["initial"], z["rewards"],
                   z["labels"], z["confidence"], z.get("evidence"), z.get("evidence_total"),
                   z.get("start_answers"))


def make_agent(config: RoundsConfig, env: Any, device: str) -> ClickPolicy:
    """A fresh clicking agent of ``config.agent`` for ``env`` (an online learner from
    ``agent_checkpoint`` when set), built by name from :mod:`bow_gym.agent_registry`.

    Online learners take an online step every 8 answered clicks unless ``agent_kwargs`` sets
    ``online_batch``.

    Args:
        config: The run's config.
        env: The unwrapped labelling env (its channels and patch grid size the agent).
        device: Torch device of a learning agent.
    """
    import torch

    from bow_gym.agent_registry import agent_spec

    spec = agent_spec(config.agent)
    kwargs = dict(config.agent_kwargs)
    if spec.learns_online():
        kwargs = {"online_batch": 8, **kwargs}
        if config.agent_checkpoint:
            return spec.load().load(_expand(config.agent_checkpoint), device=device,
                                    **{**spec.kwargs, **kwargs})
    # The network's initial weights come from the run's seed, not from whatever the caller's
    # global torch RNG holds (which would make a run depend on what ran before it).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed(config, 0, 6))
        return spec.make(env, seed=config.seed, device=device, **kwargs)


def save_agent(agent: ClickPolicy, round_dir: Path) -> None:
    """An online learner's weights (safetensors) and optimiser state, so that the next round
    resumes exactly; nothing for other agents."""
    import torch

    if not isinstance(agent, OnlineLearner):
        return
    agent.save(round_dir / "agent.safetensors")
    with atomic_path(round_dir / "agent_optimizer.pt") as tmp:
        torch.save(agent.opt.state_dict(), tmp)


def load_agent(config: RoundsConfig, round_dir: Path, env: Any, device: str) -> ClickPolicy:
    """The online learner as a round left it (the answer model's replay buffer starts empty);
    a fresh agent (:func:`make_agent`) for agents that do not learn online."""
    import torch

    from bow_gym.agent_registry import agent_spec

    spec = agent_spec(config.agent)
    if not spec.learns_online():
        return make_agent(config, env, device)
    kwargs = {"online_batch": 8, **spec.kwargs, **config.agent_kwargs}
    with _reading(round_dir / "agent.safetensors"):
        agent = spec.load().load(round_dir / "agent.safetensors", device=device, **kwargs)
    opt = round_dir / "agent_optimizer.pt"
    if opt.is_file():
        with _reading(opt):
            agent.opt.load_state_dict(torch.load(opt, map_location=device, weights_only=True))
    return agent


def label_round(envs: Sequence[Any], agent: ClickPolicy, order: Sequence[int], *, seed: int,
                progress: bool = True, desc: str = "label") -> Labels:
    """Each image of ``order`` gets one episode of ``clicks_per_episode`` clicks.

    The episodes run in lockstep over ``envs`` (copies of one env), so that a
    :class:`~bow_gym.policy.BatchedLearner` acts on a batch with one forward pass and learns
    online from every answered click (its ``learn_online``). Other policies act one episode at
    a time, each env with a :meth:`~bow_gym.policy.ClickPolicy.fork` twin (an independent copy,
    or one that shares what it learns). Only policies that declare ``reads_ground_truth`` (the
    ceiling) get the ground truth.

    Returns:
        The :class:`Labels`, in ``order``.
    """
    from tqdm.auto import tqdm

    batched = isinstance(agent, BatchedLearner)
    if batched:
        policies = [agent] * len(envs)
    else:
        policies = [agent] + [agent.fork() for _ in envs[1:]]
    n, k = len(order), envs[0].unwrapped.clicks_per_episode
    ids: list[str] = [""] * n
    pseudo = np.zeros((n, *envs[0].unwrapped.observation_space.shape[1:]), bool)
    initial = np.zeros_like(pseudo)
    rewards = np.zeros((n, k), np.int8)
    labels = np.zeros((n, k), np.int8)
    conf = np.full((n, k), np.nan, np.float32)
    base0 = envs[0].unwrapped
    evidence = np.zeros((n, base0.n_patches), np.int8)
    (gh, gw), (ch, cw) = base0.grid, base0.cell
    queue = list(range(n))
    slots: list[dict[str, Any] | None] = [None] * len(envs)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)

    def start(s: int) -> None:
        if not queue:
            slots[s] = None
            return
        pos = queue.pop(0)
        obs, info = envs[s].reset(seed=seed + pos, options={"index": int(order[pos])})
        policies[s].reset(seed + pos)
        ids[pos] = info["image_id"]
        initial[pos] = obs[3] > 127
        slots[s] = {"pos": pos, "obs": obs, "info": info, "click": 0, "rejected": [],
                    # A batched policy's memory of the episode (REINFORCE's belief policy).
                    "memory": agent.new_episode() if batched else None}

    for s in range(len(envs)):
        start(s)
    while any(slot is not None for slot in slots):
        live = [s for s, slot in enumerate(slots) if slot is not None]
        if batched:
            acts, confs = agent.act_batch(np.stack([slots[s]["obs"] for s in live]),
                                          [slots[s]["rejected"] for s in live],
                                          [envs[s].unwrapped for s in live],
                                          episodes=[slots[s]["memory"] for s in live])
        else:
            acts, confs = zip(*[choose_click(policies[s], slots[s]["obs"], slots[s]["info"],
                                             envs[s].unwrapped) for s in live], strict=True)
        for s, a, c in zip(live, acts, confs, strict=True):
            slot = slots[s]
            obs, r, term, trunc, info = envs[s].step(int(a))
            pos, j = slot["pos"], slot["click"]
            rewards[pos, j], conf[pos, j] = int(r), c
            labels[pos, j] = int(info["click"]["label"])
            base = envs[s].unwrapped
            fg_before = (slot["obs"][3] > 127).reshape(gh, ch, gw, cw).sum(axis=(1, 3)).ravel()
            record_evidence(evidence[pos], base.propagation_graph()[int(info["patch"])],
                            fg_before, int(info["click"]["label"]), bool(info["accepted"]),
                            ch * cw)
            if batched:
                agent.answer_batch([slot["memory"]], [float(r)])
                agent.learn_online(slot["obs"], int(a), float(r))
                if r < 0:
                    slot["rejected"].append((int(info["click"]["label"]), int(info["patch"])))
            else:
                policies[s].observe(int(a), float(r), bool(term), public_info(info))
            slot.update(obs=obs, info=info, click=j + 1)
            if term or trunc:
                pseudo[pos] = envs[s].unwrapped.current_mask()
                bar.update(1)
                start(s)
        if progress and bar.n % 20 == 0:
            done = rewards[:bar.n] if bar.n else rewards[:1]
            bar.set_postfix(better=f"{np.mean(done > 0):.2f}")
    bar.close()
    agent.flush()
    return Labels(ids, pseudo, initial, rewards, labels, conf, evidence, evidence.copy())


def _resize_prob(prob: np.ndarray, shape: tuple[int, int], level: int = 128) -> np.ndarray:
    """uint8 probability map -> bool mask at ``shape`` (linear, then ``>= level``; 128 is 0.5)."""
    if prob.shape != shape:
        prob = cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    return prob >= level


def _prediction_level(pred: Mapping[str, np.ndarray]) -> int:
    """The uint8 level a round's ``predictions.npz`` is thresholded at (128 in runs recorded
    before ``mask_threshold`` existed)."""
    return int(pred["level"]) if "level" in pred else 128


def evaluate_masks(masks: Sequence[np.ndarray], gts: Sequence[np.ndarray], *,
                   probabilities: bool = False, fill: bool = False, level: int = 128
                   ) -> list[dict[str, float]]:
    """Dice, IoU and HD95 of each mask against its ground truth, at the ground truth's size.

    Args:
        masks: Bool masks (or uint8 probabilities with ``probabilities=True``) of any size.
        gts: Ground-truth masks at the images' own resolution. **Evaluation only.**
        fill: Fill holes first (:func:`bow_gym.metrics.fill_holes`).
        level: With ``probabilities``, a pixel is foreground where ``prob >= level``.
    """
    from bow_gym.metrics import evaluate, fill_holes

    rows = []
    for m, gt in zip(masks, gts, strict=True):
        shape = gt.shape[:2]
        pred = _resize_prob(m, shape, level) if probabilities else resize_mask(m, shape)
        if fill:
            pred = fill_holes(pred)
        rows.append(evaluate(pred, gt))
    return rows


def summarise(rows: Sequence[Mapping[str, float]], seed: int = 0) -> dict[str, float]:
    """Mean Dice with a 95% bootstrap CI, mean IoU, and HD95 (mean, median, CI of the mean)."""
    from bow_gym.metrics import bootstrap_ci

    d = np.array([r["dice"] for r in rows], np.float64)
    h = np.array([r["hd95"] for r in rows], np.float64)
    dl, dh = bootstrap_ci(d, seed=seed)
    hl, hh = bootstrap_ci(h, seed=seed)
    finite = h[np.isfinite(h)]
    return {"n": len(rows), "dice_mean": float(d.mean()) if len(d) else float("nan"),
            "dice_ci_low": dl, "dice_ci_high": dh,
            "iou_mean": float(np.mean([r["iou"] for r in rows])) if rows else float("nan"),
            "hd95_mean": float(finite.mean()) if len(finite) else float("nan"),
            "hd95_median": float(np.median(finite)) if len(finite) else float("nan"),
            "hd95_ci_low": hl, "hd95_ci_high": hh}


# --------------------------------------------------------------------------- the run
class RoundsRun:
    """A run directory and the state that carries from round to round.

    Args:
        config: The experiment.
        out: Run directory; an existing one is resumed if its ``config.json`` matches.
        resume: ``False`` refuses to touch a directory that already holds a run.
        labelling: ``False`` for a run that only trains the segmenter (:func:`train_supervised`):
            the backbone, the env and the agent are then neither built nor checked.

    Raises:
        ValueError: A config value that the run would refuse later (data set, backbone,
            threshold, env or oracle argument, segmenter, agent, LoRA), naming the field;
            also a directory that holds a run of another config.
        FileNotFoundError: A missing data set root or weights file.
        RuntimeError: Unavailable device or backbone weights.
        FileExistsError: ``resume=False`` and ``out`` already holds a run.

    Every check runs before ``out`` is created: a config that fails leaves nothing behind, so
    the corrected config can then use the same ``out``.
    """

    def __init__(self, config: RoundsConfig, out: str | os.PathLike, *, resume: bool = True,
                 labelling: bool = True):
        t = time.time()
        self.config = config
        self.out = Path(out)
        from bow_gym.segmenters.config import resolve_device

        self.device = resolve_device(config.device)
        self.backbone: Any = None
        stored = self.out / "config.json"
        if stored.is_file():
            if not resume:
                raise FileExistsError(f"{self.out} already holds a run ({stored.name}); to "
                                      "resume it drop --no-resume (resume=True), to start "
                                      "afresh pass another --out")
            old = _load_json(stored)
            for before, after in RENAMED_KEYS.items():  # a run started before the renaming
                if before in old and after not in old:
                    old[after] = old.pop(before)
            for f in fields(RoundsConfig):  # a field added since: the run used its default
                if f.name not in old:
                    old[f.name] = json.loads(json.dumps(
                        f.default_factory() if f.default_factory is not MISSING else f.default))
            differ, was, now = config_differences(old, config)
            if differ:
                raise ValueError(
                    f"{self.out} was started with another config: {differ} differ "
                    f"(stored: {was}, now: {now}); use another --out to start afresh")
        # Before anything is written: a config.json of a config that cannot run would make
        # the corrected rerun with the same --out look like "another config" and be refused.
        self._datasets = self._check(labelling)
        self._check_seconds = time.time() - t
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(stored, asdict(config))
        self._writer = None

    def _check(self, labelling: bool) -> tuple[SegmentationDataset, SegmentationDataset]:
        """Checks every config value the run will use, with the checks of the code that uses it.

        Cheap value checks come first; the data sets are built lazily (file lists only) and the
        backbone is built for good (:meth:`run` uses it). One env and one round-1 agent are built
        and dropped: their constructors check the env and agent arguments and the oracle.

        Args:
            labelling: Also check (and build) what clicking needs: backbone, env, agent, LoRA.

        Returns:
            The lazy labelling and evaluation data sets (:func:`build_datasets`).
        """
        cfg = self.config
        with _config_error(_fields(cfg, "segmenter", "segmenter_kwargs")):
            seg_cfg = self._segmenter_config(1)
            # Building HSNet to check its encoder file would cost seconds; its file is checked
            # here because the segmenter is only built after a round's clicks.
            ckpt = seg_cfg.checkpoint
            if ckpt is not None and not Path(ckpt).expanduser().is_file():
                raise FileNotFoundError(f"segmenter checkpoint file not found: {ckpt!r}")
        if labelling:
            from bow_gym.propagation import check_threshold

            with _config_error(_fields(cfg, "threshold")):
                check_threshold(cfg.threshold)
            if cfg.adapt:
                from bow_gym.adaptation import TripletConfig
                from bow_gym.backbones.head import HeadConfig
                from bow_gym.backbones.lora import LoRAConfig

                with _config_error(_fields(cfg, "lora_kwargs")):
                    LoRAConfig(**cfg.lora_kwargs)
                with _config_error(_fields(cfg, "head_kwargs")):
                    HeadConfig(**cfg.head_kwargs)
                with _config_error(_fields(cfg, "triplet_kwargs")):
                    TripletConfig(**cfg.triplet_kwargs)
        datasets = build_datasets(cfg)
        if not labelling:
            return datasets
        from bow_gym.backbones import create_backbone

        bkw = dict(cfg.backbone_kwargs)
        if cfg.backbone.startswith("dinov2"):
            bkw.setdefault("device", self.device)
        with _config_error(_fields(cfg, "backbone", "backbone_kwargs")):
            self.backbone = create_backbone(cfg.backbone, **bkw)
        from bow_gym.backbones.head import supports_head

        if cfg.adapt and not (getattr(self.backbone, "adaptable", False)
                              or supports_head(self.backbone)):
            raise ValueError(f"adapt = true needs an adaptable backbone (LoRA or a feature "
                             f"head); {cfg.backbone!r} has neither")
        with _config_error(_fields(cfg, "env_kwargs")):
            env = self._make_env(datasets[0], None)
        names = ("agent", "agent_kwargs") + (("agent_checkpoint",) if cfg.agent_checkpoint else ())
        with _config_error(_fields(cfg, *names)):
            # check_env: a checkpoint sized for other observations fails here, not in round 1.
            make_agent(cfg, env, self.device).check_env(env)
        return datasets

    # ------------------------------------------------------------------ helpers
    def round_dir(self, r: int) -> Path:
        return self.out / f"round_{r:02d}"

    def finished_rounds(self) -> list[int]:
        return sorted(int(p.parent.name[6:]) for p in self.out.glob("round_*/done.json"))

    @property
    def writer(self) -> Any:
        if self._writer is None and self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self.config.tensorboard = False
                print("tensorboard is not installed (pip install tensorboard): no TB logs")
                return None
            self._writer = SummaryWriter(str(self.out / "tb"))
        return self._writer

    def _log(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None and np.isfinite(value):
            self.writer.add_scalar(tag, value, step)

    # ------------------------------------------------------------------ the loop
    def run(self) -> list[dict[str, Any]]:
        """Runs (or resumes) every round; returns all metrics rows."""
        cfg = self.config
        if self.backbone is None:
            raise RuntimeError("this RoundsRun was made with labelling=False: it cannot click")
        t_setup = time.time()
        label_lazy, eval_lazy = self._datasets
        label_ds = load_in_memory(label_lazy, cfg.progress)
        eval_ds = label_ds if eval_lazy is label_lazy else load_in_memory(eval_lazy, cfg.progress)
        # the checks built the backbone: its (possibly long) loading is part of the setup time
        setup_seconds = time.time() - t_setup + self._check_seconds
        rows: list[dict[str, Any]] = []
        for r in range(1, cfg.rounds + 1):
            rows.extend(self.run_round(r, label_ds, eval_ds,
                                       setup_seconds if r == 1 else 0.0))
        self._write_metrics()
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return rows

    def _initial_masks(self, r: int, prev: Labels | None, size: int, grid: tuple[int, int]
                       ) -> dict[str, np.ndarray] | None:
        """Round ``r``'s start masks at the working resolution ``size`` (``config.start``);
        ``prev``: round ``r - 1``'s labels (loaded when the start or the evidence needs them)."""
        if r == 1:
            return None
        if self.config.start == "previous":
            return dict(zip(prev.ids, prev.pseudo, strict=True))
        pred = _load_npz(self.round_dir(r - 1) / "predictions.npz", ("label_ids", "label_prob"))
        level = _prediction_level(pred)
        masks = {str(i): _resize_prob(p, (size, size), level)
                 for i, p in zip(pred["label_ids"], pred["label_prob"], strict=True)}
        if self.config.start in ("merged", "ask"):
            if prev.evidence_total is not None:
                for i, ev in zip(prev.ids, prev.evidence_total, strict=True):
                    masks[i] = apply_evidence(masks[i], ev, grid)
        return masks

    def _ask_starts(self, r: int, label_ds: SegmentationDataset, prev: Labels,
                    proposals: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray],
                                                               dict[str, int]]:
        """``start = "ask"``: per image, the expert's choice between the previous round's
        pseudo-mask and ``proposals`` (the merged prediction): the start masks and the answers.

        One question per image, answered by the env's oracle (:meth:`BetterWorseSegEnv.ask`),
        seeded per round and image like the episodes.
        """
        env = self._make_env(label_ds, None)
        seed = _seed(self.config, r, 7)
        starts, answers = {}, {}
        for k, (iid, before) in enumerate(zip(prev.ids, prev.pseudo, strict=True)):
            env.reset(seed=seed + k, options={"image_id": iid})
            answers[iid] = env.ask(before, proposals[iid])
            starts[iid] = proposals[iid] if answers[iid] > 0 else before
        return starts, answers

    def _make_env(self, dataset: SegmentationDataset, initial: Mapping[str, np.ndarray] | None):
        from bow_gym.envs.better_worse_seg import BetterWorseSegEnv

        cfg = self.config
        return BetterWorseSegEnv(dataset, backbone=self.backbone, threshold=cfg.threshold,
                                 clicks_per_episode=cfg.clicks_per_image, initial_masks=initial,
                                 feature_cache=cfg.feature_cache, image_order="sequential",
                                 **cfg.env_kwargs)

    def _restore_adapter(self, r: int) -> None:
        """Before round ``r``, the backbone carries the adapter of the latest earlier round."""
        if not self.config.adapt:
            return
        from bow_gym.adaptation import load_adapter

        for k in range(r - 1, 0, -1):
            path = self.round_dir(k) / "adapter.safetensors"
            if path.is_file():
                with _reading(path):
                    load_adapter(self.backbone, path)
                return

    def run_round(self, r: int, label_ds: MemoryDataset, eval_ds: MemoryDataset,
                  setup_seconds: float = 0.0) -> list[dict[str, Any]]:
        """One round; every stage whose output exists is loaded instead of rerun."""
        cfg = self.config
        rd = self.round_dir(r)
        if (rd / "done.json").is_file():
            return [row for row in self._metrics_rows() if row["round"] == r]
        rd.mkdir(parents=True, exist_ok=True)
        times: dict[str, float] = {"setup": setup_seconds}
        n = len(label_ds)
        self._restore_adapter(r)

        # 1. label -------------------------------------------------------------------------
        t = time.time()
        labels_path = rd / "labels.npz"
        if labels_path.is_file():
            labels = Labels.load(labels_path)
        else:
            size = int(cfg.env_kwargs.get("obs_size", 128))
            # The previous round's labels, read once, where the start or the evidence uses them.
            prev = (Labels.load(self.round_dir(r - 1) / "labels.npz")
                    if r > 1 and (cfg.start != "prediction" or cfg.carry_evidence) else None)
            initial = self._initial_masks(r, prev, size, tuple(self.backbone.grid))
            asked: dict[str, int] = {}
            if cfg.start == "ask" and initial is not None:
                initial, asked = self._ask_starts(r, label_ds, prev, initial)
            envs = [self._make_env(label_ds, initial) for _ in range(cfg.label_envs)]
            for env in envs[1:]:
                env.features = envs[0].features  # one feature cache: each image featurised once
            if r == 1:
                agent = make_agent(cfg, envs[0], self.device)
            else:  # an online learner as round r - 1 left it; other agents afresh
                agent = load_agent(cfg, self.round_dir(r - 1), envs[0], self.device)
            order = np.random.default_rng(_seed(cfg, r, 1)).permutation(n)
            labels = label_round(envs, agent, order, seed=_seed(cfg, r, 2),
                                 progress=cfg.progress, desc=f"round {r}: clicks")
            if asked:
                labels.start_answers = np.array([asked[i] for i in labels.ids], np.int8)
            if cfg.carry_evidence and prev is not None:
                if prev.evidence_total is not None:
                    old = dict(zip(prev.ids, prev.evidence_total, strict=True))
                    for i, iid in enumerate(labels.ids):
                        if iid in old:
                            labels.evidence_total[i] = np.where(
                                labels.evidence[i] != 0, labels.evidence[i], old[iid])
            k_clicks = cfg.clicks_per_image
            step0 = (r - 1) * n * k_clicks
            clicks = [{"step": step0 + i * k_clicks + k + 1, "round": r, "image_id": iid,
                       "click": k + 1, "label": int(labels.labels[i, k]),
                       "reward": int(labels.rewards[i, k])}
                      for i, iid in enumerate(labels.ids) for k in range(k_clicks)]
            _write_csv(rd / "clicks.csv", clicks)
            save_agent(agent, rd)
            labels.save(labels_path)  # last: marks the stage done
            rewards = labels.rewards.ravel().astype(float)
            window = 50
            for s in range(0, len(rewards), window):
                self._log("charts/reward", float(rewards[s:s + window].mean()),
                          step0 + s + window)
        times["label"] = time.time() - t
        better_share = float((labels.rewards > 0).mean())
        self._log("charts/better_share", better_share, r)

        # 2. filter ------------------------------------------------------------------------
        t = time.time()
        quality_path = rd / "quality.csv"
        if quality_path.is_file():
            keep = _load_kept(quality_path, labels.ids)
        else:
            from bow_gym.pseudo_labels import combined_score, quality_signals, select_top_k

            starts = [m if r > 1 else None for m in labels.initial]
            signals = quality_signals(labels.rewards, labels.confidence, labels.pseudo, starts)
            use = cfg.quality
            if use == "auto":
                use = "feedback" if r == 1 else "agreement"
            score = combined_score(signals, use)
            keep = select_top_k(score, cfg.top_k, seed=_seed(cfg, r, 3))
            _write_csv(quality_path, [
                {"image_id": iid, **{k: float(v[i]) for k, v in signals.items()},
                 "score": float(score[i]), "kept": int(keep[i])}
                for i, iid in enumerate(labels.ids)])
        times["filter"] = time.time() - t
        kept_idx = np.flatnonzero(keep)
        label_images = [label_ds[label_ds.index_of(i)].image for i in labels.ids]

        # 3. adapt -------------------------------------------------------------------------
        t = time.time()
        targets, weights = training_targets(labels, cfg, tuple(self.backbone.grid))
        if cfg.adapt and not (rd / "adapter.safetensors").is_file():
            from bow_gym.adaptation import (
                HEAD_TRIPLET_DEFAULTS,
                TripletConfig,
                adapt_backbone,
                save_adapter,
            )
            from bow_gym.backbones.head import HeadConfig, supports_head

            head = supports_head(self.backbone)
            tcfg = TripletConfig(**{"seed": _seed(cfg, r, 4),
                                    **(HEAD_TRIPLET_DEFAULTS if head else {}),
                                    **cfg.triplet_kwargs})
            kw: dict[str, Any] = {"head": HeadConfig(**cfg.head_kwargs)} if head else {}
            if not head:
                from bow_gym.backbones.lora import LoRAConfig

                kw["lora"] = LoRAConfig(**cfg.lora_kwargs)
            adapt_backbone(self.backbone, [label_images[i] for i in kept_idx],
                           [targets[i] for i in kept_idx], tcfg, progress=cfg.progress, **kw)
            save_adapter(self.backbone, rd / "adapter.safetensors")
        times["adapt"] = time.time() - t

        # 4. train the segmenter and predict ----------------------------------------------
        t = time.time()
        pred_path = rd / "predictions.npz"
        if pred_path.is_file():
            pred = _load_npz(pred_path, ("label_ids", "label_prob", "eval_ids", "eval_prob"))
        else:
            seg_cfg = self._segmenter_config(r)
            model = self._train_segmenter(
                rd, seg_cfg, [label_images[i] for i in kept_idx], [targets[i] for i in kept_idx],
                step=r, weights=None if weights is None else [weights[i] for i in kept_idx])
            times["train"] = time.time() - t
            t = time.time()
            pred = self._predict(model, seg_cfg, label_images, labels.ids, eval_ds)
            pred["level"] = np.array(self._level(
                pred["label_prob"][kept_idx], [targets[i] for i in kept_idx]), np.uint8)
            _save_npz(pred_path, **pred)
            times["predict"] = time.time() - t
        times.setdefault("train", 0.0)
        times.setdefault("predict", time.time() - t)

        # 5. evaluate ----------------------------------------------------------------------
        t = time.time()
        rows = self._evaluate(r, rd, labels, pred, label_ds, eval_ds, keep)
        times["evaluate"] = time.time() - t
        self._write_examples(rd, labels, pred, label_ds, label_images)
        times["total"] = float(sum(times.values()))
        for row in rows:
            asked = labels.start_answers
            row.update(better_share=better_share, kept=float(keep.mean()),
                       # ask: share of images whose merged prediction the expert preferred
                       prediction_preferred=(float((asked > 0).mean()) if asked is not None
                                             and len(asked) else float("nan")),
                       mask_threshold=round(_prediction_level(pred) / 255, 4),
                       **{f"seconds_{k}": round(v, 2) for k, v in times.items()})
        _write_json(rd / "metrics.json", {"rows": rows})
        _write_json(rd / "times.json", times)
        for row in rows:
            if not row["fill_holes"]:
                self._log(f"eval/dice_{row['target']}", row["dice_mean"], r)
                self._log(f"eval/hd95_{row['target']}", row["hd95_mean"], r)
        self._log("time/round_seconds", times["total"], r)
        _write_json(rd / "done.json", {"round": r, "seconds": times["total"]})
        self._write_metrics()
        return rows

    # ------------------------------------------------------------------ stage helpers
    def _segmenter_config(self, r: int) -> Any:
        from bow_gym.segmenters import preset

        cfg = self.config
        kw = {"seed": _seed(cfg, r, 5), "device": self.device, "progress": cfg.progress,
              **cfg.segmenter_kwargs}
        if "checkpoint" in kw:
            kw["checkpoint"] = _expand(kw["checkpoint"])
        return preset(cfg.segmenter, **kw)

    def _level(self, label_prob: np.ndarray, targets: Sequence[np.ndarray]) -> int:
        """The uint8 level this round's predictions become masks at (``mask_threshold``)."""
        if self.config.mask_threshold == MATCH_AREA:
            return match_area_level(list(label_prob), targets)
        return probability_level(self.config.mask_threshold)

    def _train_segmenter(self, rd: Path, seg_cfg: Any, images: list[np.ndarray],
                         masks: list[np.ndarray], step: int,
                         weights: list[np.ndarray] | None = None) -> Any:
        from bow_gym.segmenters import (
            build_segmenter,
            load_segmenter,
            save_segmenter,
            train_segmenter,
        )

        path = rd / "segmenter.safetensors"
        if path.is_file():
            with _reading(path):
                model, _ = load_segmenter(path, device=seg_cfg.device)
            return model
        if not images:
            raise ValueError("no pseudo-masks left to train the segmenter on")
        if self.config.segmenter_init == "previous" and step > 1:
            # Trains on from the previous round's segmenter (not built afresh, so no pretrained
            # encoder is fetched only to be overwritten).
            previous = self.round_dir(step - 1) / "segmenter.safetensors"
            if not previous.is_file():
                raise FileNotFoundError(f"segmenter_init='previous': round {step - 1}'s segmenter "
                                        f"{str(previous)!r} is missing")
            with _reading(previous):
                model, _ = load_segmenter(previous, device=seg_cfg.device)
        else:
            model = build_segmenter(seg_cfg)
        history = train_segmenter(model, images, masks, seg_cfg, weights=weights)
        for e, loss in enumerate(history.get("loss", [])):
            self._log("losses/segmenter_epoch", float(loss), (step - 1) * 1000 + e)
        save_segmenter(model, path, seg_cfg)
        return model

    def _predict(self, model: Any, seg_cfg: Any, label_images: list[np.ndarray],
                 label_ids: list[str], eval_ds: MemoryDataset) -> dict[str, np.ndarray]:
        from bow_gym.segmenters import predict_probabilities

        def probs(images: list[np.ndarray]) -> np.ndarray:
            p = predict_probabilities(model, images, size=seg_cfg.size, device=seg_cfg.device,
                                      batch_size=seg_cfg.batch_size, progress=False)
            return np.round(p * 255).astype(np.uint8)

        out = {"label_ids": np.array(label_ids), "label_prob": probs(label_images)}
        if self.config.protocol == "transductive":
            out["eval_ids"], out["eval_prob"] = out["label_ids"], out["label_prob"]
        else:
            out["eval_ids"] = np.array(eval_ds.ids)
            out["eval_prob"] = probs([s.image for s in eval_ds.samples])
        return out

    def _evaluate(self, r: int, rd: Path, labels: Labels, pred: Mapping[str, np.ndarray],
                  label_ds: MemoryDataset, eval_ds: MemoryDataset, keep: np.ndarray
                  ) -> list[dict[str, Any]]:
        cfg = self.config
        label_gt = [label_ds[label_ds.index_of(i)].mask for i in labels.ids]
        eval_ids = [str(i) for i in pred["eval_ids"]]
        eval_gt = [eval_ds[eval_ds.index_of(i)].mask for i in eval_ids]
        split_label = "all" if cfg.protocol == "transductive" else "train"
        split_eval = "all" if cfg.protocol == "transductive" else "test"
        jobs = [("initial", split_label, labels.ids, labels.initial, label_gt, False),
                ("pseudo", split_label, labels.ids, labels.pseudo, label_gt, False),
                ("prediction", split_eval, eval_ids, pred["eval_prob"], eval_gt, True)]
        level = _prediction_level(pred)
        per_image, rows = [], []
        for fill in ([False, True] if cfg.fill_holes else [False]):
            for target, split, ids, masks, gts, is_prob in jobs:
                res = evaluate_masks(masks, gts, probabilities=is_prob, fill=fill, level=level)
                empty = [not gt.any() for gt in gts]
                if not label_ds.has_ground_truth:  # images a person labelled: nothing to score
                    res = [dict.fromkeys(m, float("nan")) for m in res]
                    empty = [False] * len(res)
                per_image += [{"round": r, "target": target, "fill_holes": int(fill),
                               "image_id": iid, "empty_gt": int(e), **m}
                              for iid, m, e in zip(ids, res, empty, strict=True)]
                # Empty ground truth (BUSI normal) scores by other rules: with some, the target
                # is also summarised without and with only them ("prediction[empty-gt]").
                for group, members in ground_truth_groups(empty).items():
                    rows.append({"round": r, "target": ground_truth_label(target, group),
                                 "split": split, "fill_holes": int(fill),
                                 **summarise([m for m, k in zip(res, members, strict=True) if k],
                                             seed=r)})
                if target == "pseudo" and not fill and cfg.top_k < 1:
                    kept = [m for m, k in zip(res, keep, strict=True) if k]
                    rows.append({"round": r, "target": "pseudo_kept", "split": split,
                                 "fill_holes": 0, **summarise(kept, seed=r)})
        _write_csv(rd / "per_image.csv", per_image)
        return rows

    def _write_examples(self, rd: Path, labels: Labels, pred: Mapping[str, np.ndarray],
                        label_ds: MemoryDataset, label_images: list[np.ndarray]) -> None:
        k = min(self.config.examples, len(labels.ids))
        if k <= 0:
            return
        # the same images every round: the first ids in sorted order
        chosen = sorted(range(len(labels.ids)), key=lambda i: labels.ids[i])[:k]
        s = labels.pseudo.shape[1]
        level = _prediction_level(pred)
        prob = dict(zip([str(i) for i in pred["label_ids"]], pred["label_prob"], strict=True))
        _save_npz(
            rd / "examples.npz",
            ids=np.array([labels.ids[i] for i in chosen]),
            image=np.stack([cv2.resize(label_images[i], (s, s), interpolation=cv2.INTER_AREA)
                            for i in chosen]),
            initial=labels.initial[chosen], pseudo=labels.pseudo[chosen],
            prediction=np.stack([_resize_prob(prob[labels.ids[i]], (s, s), level)
                                 for i in chosen]),
            ground_truth=np.stack([
                resize_mask(label_ds[label_ds.index_of(labels.ids[i])].mask, (s, s))
                for i in chosen]))

    def _metrics_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.finished_rounds():
            path = self.round_dir(r) / "metrics.json"
            if path.is_file():
                rows.extend(_load_json(path)["rows"])
        return rows

    def _write_metrics(self) -> None:
        rows = self._metrics_rows()
        _write_csv(self.out / "metrics.csv", rows)
        _write_json(self.out / "metrics.json", {"config": asdict(self.config), "rows": rows})


def run_rounds(config: RoundsConfig, out: str | os.PathLike, *, resume: bool = True
               ) -> list[dict[str, Any]]:
    """Runs (or resumes) a multi-round experiment in ``out``; returns its metrics rows.

    See the module docstring for the stages, the protocols and the run directory.
    """
    return RoundsRun(config, out, resume=resume).run()


def train_supervised(config: RoundsConfig, out: str | os.PathLike) -> list[dict[str, Any]]:
    """The upper bound: the segmenter trained on the labelling images' **ground truth**.

    Not part of the method (no clicks, no oracle); it tells how good the segmenter can get on
    these images with perfect masks. Writes ``per_image.csv`` and then ``metrics.json`` in
    ``out``; a folder that already has ``metrics.json`` is not trained again.
    """
    from bow_gym.segmenters import build_segmenter, train_segmenter

    run = RoundsRun(config, out, labelling=False)
    done = Path(out) / "metrics.json"
    if done.is_file():  # written last: this upper bound was already measured
        return json.loads(done.read_text())["rows"]
    label_lazy, eval_lazy = run._datasets
    label_ds = load_in_memory(label_lazy, config.progress)
    eval_ds = label_ds if eval_lazy is label_lazy else load_in_memory(eval_lazy, config.progress)
    seg_cfg = run._segmenter_config(1)
    t = time.time()
    model = build_segmenter(seg_cfg)
    train_segmenter(model, [s.image for s in label_ds.samples],
                    [s.mask for s in label_ds.samples], seg_cfg)
    pred = run._predict(model, seg_cfg, [s.image for s in label_ds.samples], label_ds.ids,
                        eval_ds)
    # the same rule as the method's rows, matched to the masks this segmenter trained on
    level = run._level(pred["label_prob"], [s.mask for s in label_ds.samples])
    res = evaluate_masks(pred["eval_prob"], [eval_ds[eval_ds.index_of(str(i))].mask
                                             for i in pred["eval_ids"]], probabilities=True,
                         level=level)
    row = {"target": "supervised", "fill_holes": 0, **summarise(res),
           "mask_threshold": round(level / 255, 4), "seconds": round(time.time() - t, 2)}
    _write_csv(Path(out) / "per_image.csv",
               [{"image_id": str(i), **m} for i, m in zip(pred["eval_ids"], res, strict=True)])
    _write_json(Path(out) / "metrics.json", {"config": asdict(config), "rows": [row]})
    return [row]
