"""The method's figures, drawn from one or more multi-round run directories.

A run directory (written by the multi-round pipeline) looks like::

    <run>/
      config.json          resolved config (a JSON object; "name" names the run)
      metrics.csv          one row per (round, target, fill_holes): means and 95% CIs
      round_01/ ...        one folder per round, two-digit and 1-based
        per_image.csv      round, target, fill_holes, image_id, dice, iou, hd95
        clicks.csv         step, round, image_id, click, label, reward (one row per click)
        examples.npz       ids, image, initial, pseudo, prediction, ground_truth
        done.json          present once the round finished

Only finished rounds (with ``done.json``) count: a round folder without it, e.g. a round still
running, is ignored together with its rows in ``metrics.csv``. Dice is stored as a fraction and
drawn in percent; HD95 may be ``nan`` (empty masks) and is then left out of means and plots.

Figures (:func:`make_figures` writes all four, ``python -m bow_gym.figures RUN ...`` too):

1. :func:`plot_round_metrics`: Dice (%) and HD95 per round with 95% CIs, one line per run and
   target (several runs overlay an ablation).
2. :func:`plot_dice_distributions`: per-image Dice per round, box plots and jittered points.
3. :func:`plot_reward_curves`: moving average of the expert's answers over the click steps, and
   the share of "better" answers per round.
4. :func:`plot_qualitative`: example images with initial mask, pseudo-mask, prediction and
   ground truth.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bow_gym.io_utils import atomic_write_bytes
from bow_gym.metrics import dice as dice_score
from bow_gym.metrics import ground_truth_label

__all__ = [
    "FIGURE_NAMES",
    "GROUND_TRUTH_FIGURE_NAME",
    "RunData",
    "build_parser",
    "load_run",
    "main",
    "make_figures",
    "plot_dice_distributions",
    "plot_qualitative",
    "plot_reward_curves",
    "plot_round_metrics",
]

#: File names :func:`make_figures` writes, in order.
#: Figure 1 for the ground-truth groups, drawn when a run evaluated empty ground truth.
GROUND_TRUTH_FIGURE_NAME = "fig1_dice_hd95_by_ground_truth.png"
#: Its targets: the predictions on images without and with only empty ground truth.
GROUND_TRUTH_FIGURE_TARGETS = tuple(ground_truth_label("prediction", group)
                                    for group in ("non_empty", "empty"))
FIGURE_NAMES = (
    "fig1_dice_hd95.png",
    "fig2_dice_distributions.png",
    "fig3_reward_curves.png",
    "fig4_qualitative.png",
)

_DPI = 150
_ROUND_DIR = re.compile(r"round_(\d+)")
_EXAMPLE_ARRAYS = ("ids", "image", "initial", "pseudo", "prediction", "ground_truth")
_MASK_ARRAYS = ("initial", "pseudo", "prediction", "ground_truth")
_TARGET_STYLES = {"prediction": "-", "pseudo": "--", "initial": ":"}
# A run reports each (round, target, fill_holes) once; should a file list several splits anyway,
# these are the ones the figures mean: predictions are judged on held-out images, the masks the
# clicks produced on the labelled ones.
_SPLIT_PREFERENCE = {
    "prediction": ("test", "all", "train"),
    "pseudo": ("train", "all", "test"),
    "initial": ("train", "all", "test"),
}


# --------------------------------------------------------------------------------------------
# Loading


def _parse_int(value: str) -> int:
    text = value.strip()
    if text.lower() in ("true", "false"):
        return int(text.lower() == "true")
    try:
        return int(text)
    except ValueError:
        number = float(text)  # "3.0" from a writer that went through floats
        if not number.is_integer():
            raise ValueError(f"{value!r} is not an integer") from None
        return int(number)


def _parse_float(value: str) -> float:
    text = value.strip()
    return math.nan if text == "" else float(text)


_Schema = dict[str, Callable[[str], Any]]

_METRICS_SCHEMA: _Schema = {
    "round": _parse_int, "target": str, "split": str, "fill_holes": _parse_int, "n": _parse_int,
    "dice_mean": _parse_float, "dice_ci_low": _parse_float, "dice_ci_high": _parse_float,
    "iou_mean": _parse_float, "hd95_mean": _parse_float, "hd95_median": _parse_float,
    "hd95_ci_low": _parse_float, "hd95_ci_high": _parse_float, "better_share": _parse_float,
    "kept": _parse_float,
}
_METRICS_REQUIRED = ("round", "target", "fill_holes", "dice_mean", "dice_ci_low", "dice_ci_high",
                     "hd95_mean", "hd95_ci_low", "hd95_ci_high")
_PER_IMAGE_SCHEMA: _Schema = {
    "round": _parse_int, "target": str, "fill_holes": _parse_int, "image_id": str,
    "dice": _parse_float, "iou": _parse_float, "hd95": _parse_float,
}
_PER_IMAGE_REQUIRED = ("round", "target", "fill_holes", "image_id", "dice")
_CLICKS_SCHEMA: _Schema = {
    "step": _parse_int, "round": _parse_int, "image_id": str, "click": _parse_int,
    "label": _parse_int, "reward": _parse_float,
}
_CLICKS_REQUIRED = ("step", "round", "reward")


def _read_csv(path: Path, schema: _Schema, required: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of ``path`` with the columns in ``schema`` converted; other columns stay strings.

    Raises:
        ValueError: If the file has no header, lacks a column of ``required`` or holds a value
            that does not parse.
    """
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            # A writer with no rows (e.g. csv.DictWriter without field names) leaves an empty
            # file or a blank header; that is no data, not a broken file.
            if any(row for row in csv.reader(f)):
                raise ValueError(f"{path}: no header, expected columns {', '.join(required)}")
            return []
        missing = [c for c in required if c not in reader.fieldnames]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} "
                             f"(found {', '.join(reader.fieldnames)})")
        rows = []
        for line, raw in enumerate(reader, start=2):
            row: dict[str, Any] = {}
            for key, value in raw.items():
                if key is None:  # surplus fields on a short header
                    continue
                parse = schema.get(key)
                if parse is None:
                    row[key] = value
                    continue
                if value is None:
                    raise ValueError(f"{path}, line {line}: no value for column {key!r}")
                try:
                    row[key] = parse(value)
                except ValueError:
                    raise ValueError(f"{path}, line {line}: column {key!r}: cannot read "
                                     f"{value!r}") from None
            rows.append(row)
    return rows


def _check_rounds(rows: list[dict[str, Any]], path: Path, expected: int) -> None:
    """Catch a writer whose ``round`` column disagrees with the folder (e.g. counts from 0)."""
    bad = sorted({r["round"] for r in rows} - {expected})
    if bad:
        raise ValueError(f"{path}: rows with round {bad} in the folder of round {expected}")


@dataclass
class RunData:
    """One run directory, loaded by :func:`load_run`; only its finished rounds are included.

    Attributes:
        path: The run directory.
        name: The legend label: the config's ``"name"``, else the folder name.
        config: ``config.json`` (the resolved config).
        metrics: Rows of ``metrics.csv`` with numeric columns converted (``round``, ``n`` and
            ``fill_holes`` to ``int``, means and CIs to ``float``, ``nan`` where empty).
        per_image: Rows of every finished round's ``per_image.csv``, in round order.
        clicks: Rows of every finished round's ``clicks.csv``, in round order.
        rounds: The finished rounds, ascending.
        example_paths: ``round -> examples.npz`` for the finished rounds that have one; the
            arrays are read on first use by :meth:`examples`.
    """

    path: Path
    name: str
    config: dict[str, Any]
    metrics: list[dict[str, Any]]
    per_image: list[dict[str, Any]]
    clicks: list[dict[str, Any]]
    rounds: list[int]
    example_paths: dict[int, Path]
    _examples: dict[int, dict[str, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False)

    def examples(self, round: int | None = None) -> dict[str, np.ndarray]:
        """The example arrays of one finished round (default: the last), cached.

        Returns:
            ``ids`` (``(n,)`` str), ``image`` (``(n, S, S, 3)`` uint8) and ``initial``,
            ``pseudo``, ``prediction``, ``ground_truth`` (``(n, S, S)`` bool).

        Raises:
            ValueError: If the run has no finished round, ``round`` is not one, or the file is
                malformed.
            FileNotFoundError: If the round has no ``examples.npz``.
        """
        round = self._resolve_round(round)
        if round not in self._examples:
            path = self.example_paths.get(round)
            if path is None:
                raise FileNotFoundError(
                    f"{self.path / f'round_{round:02d}' / 'examples.npz'}: no such file "
                    f"(round {round} saved no examples)")
            self._examples[round] = _load_examples(path)
        return self._examples[round]

    def _resolve_round(self, round: int | None) -> int:
        if not self.rounds:
            raise ValueError(f"{self.path}: no finished round (no round_NN/done.json)")
        if round is None:
            return self.rounds[-1]
        if round not in self.rounds:
            raise ValueError(f"{self.path}: round {round} is not a finished round "
                             f"(finished: {', '.join(map(str, self.rounds))})")
        return round


def _load_examples(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in _EXAMPLE_ARRAYS if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing array(s) {', '.join(missing)} "
                                 f"(expected {', '.join(_EXAMPLE_ARRAYS)})")
            data = {k: z[k] for k in _EXAMPLE_ARRAYS}
    except ValueError as e:
        if "allow_pickle" in str(e):  # ids saved as an object array
            raise ValueError(f"{path}: arrays must not need pickle (save ids as a str "
                             f"array)") from None
        raise
    ids = np.asarray([str(i) for i in data["ids"].reshape(-1)])
    image = np.asarray(data["image"])
    if image.ndim == 4 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:  # grey images
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 4 or image.shape[-1] != 3 or image.shape[0] != len(ids):
        raise ValueError(f"{path}: image has shape {data['image'].shape}, expected "
                         f"({len(ids)}, S, S, 3)")
    if image.dtype != np.uint8:
        scale = 255.0 if image.size and float(np.nanmax(image)) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image.astype(np.float64) * scale), 0, 255).astype(np.uint8)
    out = {"ids": ids, "image": image}
    for key in _MASK_ARRAYS:
        mask = np.asarray(data[key])
        if mask.shape != image.shape[:3]:
            raise ValueError(f"{path}: {key} has shape {mask.shape}, expected {image.shape[:3]} "
                             f"(one mask per image, at the image's size)")
        out[key] = mask.astype(bool, copy=False)
    return out


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Load a run directory; only finished rounds (``round_NN/done.json``) are kept.

    ``metrics.csv`` rows of a round whose folder exists without ``done.json`` are dropped too;
    rows of rounds without a folder (none in the documented format) are kept.

    Args:
        run_dir: The run directory.

    Returns:
        The run's config, metrics, per-image rows and clicks, with a lazy loader for examples.

    Raises:
        FileNotFoundError: If ``run_dir``, its ``metrics.csv`` or ``config.json``, or a finished
            round's ``per_image.csv`` or ``clicks.csv`` is missing.
        NotADirectoryError: If ``run_dir`` is not a directory.
        ValueError: If a file is malformed (the message names it).
    """
    path = Path(run_dir)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such run directory")
    if not path.is_dir():
        raise NotADirectoryError(f"{path}: not a directory (expected a bow-gym run directory)")
    for required in ("metrics.csv", "config.json"):
        if not (path / required).is_file():
            hint = ""
            if required == "metrics.csv" and (path / "config.json").is_file():
                # the pipeline writes metrics.csv once the first round is done
                hint = "; it has a config.json, so perhaps no round has finished yet"
            raise FileNotFoundError(
                f"{path} is not a bow-gym run directory (no {required}){hint}")

    config_path = path / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    name = config.get("name")
    if not isinstance(name, str) or not name.strip():
        name = path.resolve().name

    round_dirs: dict[int, Path] = {}
    unfinished: set[int] = set()
    for child in path.iterdir():
        match = _ROUND_DIR.fullmatch(child.name)
        if match and child.is_dir():
            if (child / "done.json").is_file():
                round_dirs[int(match.group(1))] = child
            else:
                unfinished.add(int(match.group(1)))
    finished = sorted(round_dirs)

    metrics = [row for row in _read_csv(path / "metrics.csv", _METRICS_SCHEMA, _METRICS_REQUIRED)
               if row["round"] not in unfinished]
    per_image: list[dict[str, Any]] = []
    clicks: list[dict[str, Any]] = []
    example_paths: dict[int, Path] = {}
    for number in finished:
        round_dir = round_dirs[number]
        for file_name, schema, required, rows in (
                ("per_image.csv", _PER_IMAGE_SCHEMA, _PER_IMAGE_REQUIRED, per_image),
                ("clicks.csv", _CLICKS_SCHEMA, _CLICKS_REQUIRED, clicks)):
            file = round_dir / file_name
            if not file.is_file():
                raise FileNotFoundError(f"{file}: missing, although {round_dir / 'done.json'} "
                                        f"marks the round finished")
            new = _read_csv(file, schema, required)
            _check_rounds(new, file, number)
            rows.extend(new)
        if (round_dir / "examples.npz").is_file():
            example_paths[number] = round_dir / "examples.npz"
    return RunData(path=path, name=name, config=config, metrics=metrics, per_image=per_image,
                   clicks=clicks, rounds=finished, example_paths=example_paths)


def _as_run(run: RunData | str | os.PathLike) -> RunData:
    return run if isinstance(run, RunData) else load_run(run)


def _as_runs(runs: RunData | str | os.PathLike | Sequence[RunData | str | os.PathLike],
             ) -> list[RunData]:
    if isinstance(runs, (RunData, str, os.PathLike)):
        runs = [runs]
    out = [_as_run(r) for r in runs]
    if not out:
        raise ValueError("no runs given")
    return out


# --------------------------------------------------------------------------------------------
# Drawing helpers


def _new_figure(figsize: tuple[float, float]):
    # A bare Figure renders through Agg without pyplot: no global backend switch (which would
    # disturb a notebook's) and no figure registry that leaks memory when nobody closes them.
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _save(fig, out_path: str | os.PathLike, dpi: int) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    out = Path(out_path)
    atomic_write_bytes(out, buffer.getvalue())
    return out


def _colour(index: int) -> tuple[float, float, float, float]:
    from matplotlib import colormaps

    return colormaps["tab10"](index % 10)


def _runs_text(runs: Sequence[RunData]) -> str:
    return ", ".join(f"{r.name} ({r.path})" for r in runs)


def _metric_rows(run: RunData, target: str, fill_holes: int) -> list[dict[str, Any]]:
    """One ``metrics.csv`` row per round for ``target``, ascending by round."""
    by_round: dict[int, list[dict[str, Any]]] = {}
    for row in run.metrics:
        if row["target"] == target and row["fill_holes"] == fill_holes:
            by_round.setdefault(row["round"], []).append(row)
    preference = _SPLIT_PREFERENCE.get(target, ("test", "all", "train"))

    def rank(row: dict[str, Any]) -> int:
        split = row.get("split")
        return preference.index(split) if split in preference else len(preference)

    return [min(by_round[r], key=rank) for r in sorted(by_round)]


def _round_axis(ax, rounds: Sequence[int]) -> None:
    ax.set_xlabel("Round")
    if rounds:
        ax.set_xticks(sorted(set(rounds)))
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------------------------
# Figures


def plot_round_metrics(
    runs: RunData | str | os.PathLike | Sequence[RunData | str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    fill_holes: bool = False,
    targets: Sequence[str] = ("prediction", "pseudo"),
    dpi: int = _DPI,
) -> Path:
    """Fig. 1: Dice (%) and HD95 per round with 95% CIs.

    One line per (run, target): with one run the colour tells the target; with several (an
    ablation overlay) the colour tells the run and the line style the target (solid prediction,
    dashed pseudo-mask, dotted initial mask). HD95 is drawn as the mean with its CI; rounds
    whose HD95 is ``nan`` leave a gap.

    Args:
        runs: Run data or run directories.
        out_path: The PNG to write (atomically).
        fill_holes: Use the rows computed after hole filling.
        targets: ``metrics.csv`` targets to draw.
        dpi: Resolution.

    Returns:
        ``out_path``.

    Raises:
        ValueError: If a target has no rows in any run, or nothing is left to draw.
    """
    runs = _as_runs(runs)
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    if not targets:
        raise ValueError("targets is empty")
    flag = int(bool(fill_holes))
    available = sorted({row["target"] for run in runs for row in run.metrics})
    for target in targets:
        if not any(_metric_rows(run, target, flag) for run in runs):
            raise ValueError(f"no metrics.csv rows with target {target!r} and fill_holes={flag} "
                             f"in {_runs_text(runs)} (targets present: {', '.join(available)})")

    fig = _new_figure((11.0, 4.3))
    ax_dice, ax_hd = fig.subplots(1, 2)
    lines = [(i, run, j, target) for i, run in enumerate(runs) for j, target in enumerate(targets)]
    rounds_seen: list[int] = []
    for k, (i, run, j, target) in enumerate(lines):
        rows = _metric_rows(run, target, flag)
        if not rows:
            continue
        if len(runs) == 1:
            colour, style, label = _colour(j), "-", target
        else:
            colour = _colour(i)
            style = _TARGET_STYLES.get(target, "-.")
            label = f"{run.name}: {target}"
        rounds = np.array([r["round"] for r in rows], dtype=float)
        rounds_seen.extend(int(r) for r in rounds)
        # Overlapping error bars of several lines are told apart by a small sideways offset.
        x = rounds + (k - (len(lines) - 1) / 2) * min(0.04, 0.3 / len(lines))
        for ax, key, scale in ((ax_dice, "dice", 100.0), (ax_hd, "hd95", 1.0)):
            mean = np.array([r[f"{key}_mean"] for r in rows]) * scale
            low = np.array([r[f"{key}_ci_low"] for r in rows]) * scale
            high = np.array([r[f"{key}_ci_high"] for r in rows]) * scale
            yerr = np.vstack([np.maximum(mean - low, 0), np.maximum(high - mean, 0)])
            ax.errorbar(x, mean, yerr=yerr, color=colour, linestyle=style, marker="o",
                        markersize=4, capsize=3, linewidth=1.6, label=label)
            if len(x) > 1:
                ax.fill_between(x, low, high, color=colour, alpha=0.12, linewidth=0)
    for ax in (ax_dice, ax_hd):
        _round_axis(ax, rounds_seen)
    ax_dice.set_ylabel("Dice (%)")
    ax_dice.set_title("Dice per round (mean, 95% CI)")
    ax_hd.set_ylabel("HD95 (lower is better)")
    ax_hd.set_title("HD95 per round (mean, 95% CI)")
    ax_dice.legend(fontsize=8)
    if fill_holes:
        fig.suptitle("After hole filling")
    return _save(fig, out_path, dpi)


def plot_dice_distributions(
    runs: RunData | str | os.PathLike | Sequence[RunData | str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    target: str = "prediction",
    fill_holes: bool = False,
    dpi: int = _DPI,
) -> Path:
    """Fig. 2: per-image Dice (%) per round, a box plot with jittered points per run and round.

    Rounds are the groups along the x axis; several runs stand side by side within a group.
    The jitter is seeded, so the same data draw the same figure.

    Args:
        runs: Run data or run directories.
        out_path: The PNG to write (atomically).
        target: ``per_image.csv`` target to draw.
        fill_holes: Use the rows computed after hole filling.
        dpi: Resolution.

    Returns:
        ``out_path``.

    Raises:
        ValueError: If no run has a finite Dice value for ``target``.
    """
    runs = _as_runs(runs)
    flag = int(bool(fill_holes))
    values: dict[tuple[int, int], np.ndarray] = {}
    for i, run in enumerate(runs):
        by_round: dict[int, list[float]] = {}
        for row in run.per_image:
            if row["target"] == target and row["fill_holes"] == flag:
                by_round.setdefault(row["round"], []).append(row["dice"])
        for r, dice_values in by_round.items():
            arr = np.asarray(dice_values, dtype=float) * 100.0
            arr = arr[np.isfinite(arr)]
            if arr.size:
                values[(i, r)] = arr
    if not values:
        available = sorted({row["target"] for run in runs for row in run.per_image})
        raise ValueError(f"no per-image Dice with target {target!r} and fill_holes={flag} in "
                         f"{_runs_text(runs)} (targets present: {', '.join(available)})")

    from matplotlib.patches import Patch

    rounds = sorted({r for _, r in values})
    fig = _new_figure((max(6.0, 1.1 * len(rounds) * max(1, len(runs)) + 2.0), 4.3))
    ax = fig.subplots()
    rng = np.random.default_rng(0)
    width = 0.8 / len(runs)
    for i in range(len(runs)):
        colour = _colour(i)
        for g, r in enumerate(rounds):
            arr = values.get((i, r))
            if arr is None:
                continue
            pos = g + (i - (len(runs) - 1) / 2) * width
            parts = ax.boxplot([arr], positions=[pos], widths=width * 0.7, patch_artist=True,
                               showfliers=False, manage_ticks=False)
            for box in parts["boxes"]:
                box.set(facecolor=colour, alpha=0.3, edgecolor=colour)
            for key in ("medians", "whiskers", "caps"):
                for artist in parts[key]:
                    artist.set(color=colour)
            jitter = rng.uniform(-width * 0.25, width * 0.25, arr.size)
            ax.scatter(pos + jitter, arr, s=9, color=colour, alpha=0.6, edgecolors="none",
                       zorder=3)
    ax.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    ax.set_xlabel("Round")
    ax.set_ylabel("Dice (%)")
    ax.set_ylim(-3, 103)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Per-image Dice per round ({target}{', holes filled' if fill_holes else ''})")
    ax.legend(handles=[Patch(facecolor=_colour(i), alpha=0.5, label=run.name)
                       for i, run in enumerate(runs)], fontsize=8)
    return _save(fig, out_path, dpi)


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` values; the first ``window - 1`` average what there is."""
    cumsum = np.concatenate([[0.0], np.cumsum(values, dtype=float)])
    end = np.arange(1, len(values) + 1)
    start = np.maximum(end - window, 0)
    return (cumsum[end] - cumsum[start]) / (end - start)


def plot_reward_curves(
    runs: RunData | str | os.PathLike | Sequence[RunData | str | os.PathLike],
    out_path: str | os.PathLike,
    *,
    window: int = 100,
    dpi: int = _DPI,
) -> Path:
    """Fig. 3: the agent's reward over the whole run and the share of "better" per round.

    Left: trailing moving average of the reward (+1 better, -1 worse) against the click step,
    with dotted lines where a round begins. Right: per round, the share of clicks answered
    "better" (reward > 0), runs side by side.

    Args:
        runs: Run data or run directories.
        out_path: The PNG to write (atomically).
        window: Clicks in the moving average (fewer at the start of the run).
        dpi: Resolution.

    Returns:
        ``out_path``.

    Raises:
        ValueError: If ``window`` is not a positive integer or no run has clicks.
    """
    runs = _as_runs(runs)
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if not any(run.clicks for run in runs):
        raise ValueError(f"no clicks in the finished rounds of {_runs_text(runs)}")

    fig = _new_figure((12.0, 4.3))
    ax_curve, ax_share = fig.subplots(1, 2, width_ratios=[2.2, 1.0])
    starts_per_run: list[dict[int, float]] = []
    shares: dict[tuple[int, int], float] = {}
    for i, run in enumerate(runs):
        clicks = sorted(run.clicks, key=lambda c: c["step"])
        if not clicks:
            starts_per_run.append({})
            continue
        steps = np.array([c["step"] for c in clicks], dtype=float)
        rewards = np.array([c["reward"] for c in clicks], dtype=float)
        ax_curve.plot(steps, _moving_average(rewards, int(window)), color=_colour(i),
                      linewidth=1.4, label=run.name)
        starts: dict[int, float] = {}
        for c in clicks:
            starts.setdefault(c["round"], float(c["step"]))
        starts_per_run.append(starts)
        for r in starts:
            answers = np.array([c["reward"] for c in clicks if c["round"] == r], dtype=float)
            shares[(i, r)] = float(np.mean(answers > 0))

    # Shared round boundaries are drawn once in grey; runs whose rounds differ in length get
    # their own, in their colour.
    shared = all(s == starts_per_run[0] for s in starts_per_run)
    for i, starts in enumerate(starts_per_run if not shared else starts_per_run[:1]):
        colour = "grey" if shared else _colour(i)
        ordered = sorted(starts.items())
        for k, (r, start) in enumerate(ordered):
            if k:
                ax_curve.axvline(start - 0.5, color=colour, linestyle=":", linewidth=1)
            if shared:
                ax_curve.text(start, 0.98, f" R{r}", transform=ax_curve.get_xaxis_transform(),
                              va="top", ha="left", fontsize=8, color="grey")
    ax_curve.axhline(0.0, color="black", linewidth=0.6, alpha=0.5)
    ax_curve.set_ylim(-1.05, 1.05)
    ax_curve.set_xlabel("Click step")
    ax_curve.set_ylabel(f"Reward (moving average, {window} clicks)")
    ax_curve.set_title("Expert's answers over the run (+1 better, -1 worse)")
    ax_curve.grid(alpha=0.3)
    ax_curve.legend(fontsize=8, loc="lower right")

    rounds = sorted({r for _, r in shares})
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        xs = [g + (i - (len(runs) - 1) / 2) * width for g, r in enumerate(rounds)
              if (i, r) in shares]
        ys = [shares[(i, r)] for r in rounds if (i, r) in shares]
        ax_share.bar(xs, ys, width=width * 0.9, color=_colour(i), alpha=0.8, label=run.name)
    ax_share.axhline(0.5, color="black", linestyle=":", linewidth=0.8)
    ax_share.set_xticks(range(len(rounds)), [str(r) for r in rounds])
    ax_share.set_xlabel("Round")
    ax_share.set_ylabel('Share of "better" answers')
    ax_share.set_ylim(0, 1)
    ax_share.set_title('"Better" per round')
    ax_share.grid(axis="y", alpha=0.3)
    return _save(fig, out_path, dpi)


def _overlay(image: np.ndarray, mask: np.ndarray, colour: Sequence[int],
             alpha: float = 0.45) -> np.ndarray:
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return out.astype(np.uint8)


def plot_qualitative(
    run: RunData | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    round: int | None = None,
    n: int = 6,
    dpi: int = _DPI,
) -> Path:
    """Fig. 4: example images with their masks of one round.

    Rows are the first ``n`` images of the round's ``examples.npz``; columns are the image,
    the initial mask, the pseudo-mask, the prediction and the ground truth. Masks are filled in
    cyan (ground truth in yellow), with the ground truth's outline in yellow on the other masks;
    titles give each mask's Dice against the ground truth.

    Args:
        run: Run data or a run directory.
        out_path: The PNG to write (atomically).
        round: A finished round; default the last one.
        n: Most images to show.
        dpi: Resolution.

    Returns:
        ``out_path``.

    Raises:
        ValueError: If ``n < 1``, ``round`` is not a finished round or the round has no examples.
        FileNotFoundError: If the round has no ``examples.npz``.
    """
    run = _as_run(run)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    round = run._resolve_round(round)
    ex = run.examples(round)
    count = min(int(n), len(ex["ids"]))
    if count == 0:
        raise ValueError(f"{run.example_paths[round]}: holds no examples")

    columns = (("image", None), ("initial mask", "initial"), ("pseudo-mask", "pseudo"),
               ("prediction", "prediction"), ("ground truth", "ground_truth"))
    cyan, yellow = (0, 220, 255), (255, 220, 0)
    fig = _new_figure((2.2 * len(columns), 2.25 * count + 0.5))
    axes = fig.subplots(count, len(columns), squeeze=False)
    for i in range(count):
        image, truth = ex["image"][i], ex["ground_truth"][i]
        for j, (title, key) in enumerate(columns):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if key is None:
                ax.imshow(image)
                ax.set_ylabel(str(ex["ids"][i]), fontsize=8)
                ax.set_title(title if i == 0 else "", fontsize=9)
                continue
            mask = ex[key][i]
            if key == "ground_truth":
                ax.imshow(_overlay(image, mask, yellow))
                ax.set_title(title if i == 0 else "", fontsize=9)
                continue
            ax.imshow(_overlay(image, mask, cyan))
            if truth.any():  # contour() of an empty mask only warns
                ax.contour(truth.astype(float), levels=[0.5], colors=[np.array(yellow) / 255],
                           linewidths=1.0)
            score = f"Dice {100 * dice_score(mask, truth):.1f}%"
            ax.set_title(f"{title}\n{score}" if i == 0 else score, fontsize=9)
    fig.suptitle(f"{run.name}, round {round}: masks in cyan, ground truth in yellow",
                 fontsize=10)
    return _save(fig, out_path, dpi)


# --------------------------------------------------------------------------------------------
# Entry points


def _parse_labels(labels: str | Sequence[str] | None, count: int) -> list[str] | None:
    if labels is None:
        return None
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    items = [str(item).strip() for item in items]
    if len(items) != count:
        raise ValueError(f"got {len(items)} label(s) ({', '.join(items)}) for {count} run "
                         f"director{'y' if count == 1 else 'ies'}: give one label per run "
                         f"directory, in the same order")
    if not all(items):
        raise ValueError(f"empty label in {','.join(items)!r}")
    return items


def _unique_names(names: list[str]) -> list[str]:
    """Legend labels must tell runs apart: repeated names get ``#2``, ``#3``, ..."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return out


def make_figures(
    run_dirs: str | os.PathLike | Sequence[str | os.PathLike],
    out_dir: str | os.PathLike | None = None,
    *,
    labels: str | Sequence[str] | None = None,
) -> list[Path]:
    """Write the four figures of one or more runs (:data:`FIGURE_NAMES`).

    Figures 1 to 3 overlay all runs; figure 4 shows the first run's last finished round. A run
    whose last round saved no ``examples.npz`` (configured with no examples) gets no figure 4:
    a warning says so and the list holds three paths. Runs whose evaluation images include
    empty ground truth also get :data:`GROUND_TRUTH_FIGURE_NAME`: figure 1 for the predictions
    on images with and without empty ground truth apart (before figure 4 in the list).

    Args:
        run_dirs: Run directories (several: an ablation overlay, e.g. full / no-LoRA / random).
        out_dir: Where to write; default ``<first run>/figures``.
        labels: Legend labels, one per run directory (a list or a comma-separated string);
            default each run's config name.

    Returns:
        The written PNG paths, in the order of :data:`FIGURE_NAMES`.

    Raises:
        ValueError: If no run directory is given or ``labels`` does not match them.
        FileNotFoundError: If a run directory or a file it needs is missing.
    """
    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if not dirs:
        raise ValueError("make_figures needs at least one run directory")
    names = _parse_labels(labels, len(dirs))  # before loading: a typo fails fast
    runs = [load_run(d) for d in dirs]
    names = _unique_names(names if names is not None else [r.name for r in runs])
    runs = [replace(run, name=name) for run, name in zip(runs, names, strict=True)]
    out = Path(out_dir) if out_dir is not None else runs[0].path / "figures"
    paths = [
        plot_round_metrics(runs, out / FIGURE_NAMES[0]),
        plot_dice_distributions(runs, out / FIGURE_NAMES[1]),
        plot_reward_curves(runs, out / FIGURE_NAMES[2]),
    ]
    # Runs that evaluated images with empty ground truth report them apart (rounds.py writes
    # prediction[non-empty-gt] / prediction[empty-gt] rows): one more figure draws those.
    present = {row["target"] for run in runs for row in run.metrics}
    groups = [t for t in GROUND_TRUTH_FIGURE_TARGETS if t in present]
    if groups:
        paths.append(plot_round_metrics(runs, out / GROUND_TRUTH_FIGURE_NAME, targets=groups))
    last = runs[0].rounds[-1] if runs[0].rounds else None
    if last is not None and last not in runs[0].example_paths:
        # A run may be configured to save no examples; the other figures still stand.
        warnings.warn(f"{runs[0].path}: round {last} saved no examples.npz, so "
                      f"{FIGURE_NAMES[3]} is not drawn", stacklevel=2)
    else:
        paths.append(plot_qualitative(runs[0], out / FIGURE_NAMES[3]))
    return paths


def build_parser(prog: str = "bow-gym figures") -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Draw the method's figures (Dice/HD95 per round, Dice "
        "distributions, reward curves, qualitative examples) from bow-gym run directories.")
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="run directories; several are overlaid (the first gives fig. 4)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="output folder (default: RUN_DIR/figures of the first run)")
    parser.add_argument("--labels", default=None, metavar="A,B,...",
                        help="comma-separated legend labels, one per RUN_DIR")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command line: ``RUN_DIR [RUN_DIR ...] [--out DIR] [--labels a,b,...]``.

    Prints the written paths, one a line. Returns 0, or 2 with a one-line error on stderr when
    an input is wrong (missing or malformed run directory, labels not matching).
    """
    args = build_parser().parse_args(argv)
    try:
        paths = make_figures(args.run_dirs, args.out, labels=args.labels)
    except (ValueError, FileNotFoundError, NotADirectoryError) as e:
        # Bad input is the user's to fix: one line naming what is wrong, not a traceback.
        print(f"bow-gym figures: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
