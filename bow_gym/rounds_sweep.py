"""``bow-gym rounds`` over seeds and variants: one multi-round run per variant and seed, as units of
a :mod:`bow_gym.sweep` sweep (one after another, a process pool, or Ray tasks).

A variant is a name and config fields that differ from the base config (the one ``--config`` and
the other flags of ``bow-gym rounds`` give); without variants there is one, ``base``. Each run
lives in ``<out>/<variant>-s<seed>/`` (a normal run folder: ``bow-gym figures`` reads it, and a run
that was interrupted resumes after its last finished stage), its metric rows in
``<out>/<variant>-s<seed>.json`` once it ends; ``<out>/sweep.csv`` has every run's rows with
their variant and seed. A sweep file (``--sweep FILE``, TOML or JSON) may give::

    seeds = [0, 1, 2]                  # or a count: seeds = 3 (0, 1, 2)
    jobs = 2                           # and backend, ray_address, retries, threads

    [variants.reinforce]
    agent = "reinforce"

    [variants.random_top50]
    agent = "random"
    top_k = 0.5

``--seeds`` on the command line wins over the file's ``seeds``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bow_gym.sweep import SCHEDULER_KEYS, SweepOptions, SweepUnit, read_sweep_file, run_sweep

#: Keys of a rounds sweep file besides :data:`bow_gym.sweep.SCHEDULER_KEYS`.
FILE_KEYS = ("seeds", "variants")


def rounds_unit(config: str, overrides: dict[str, Any], run_dir: str,
                resume: bool = True) -> dict[str, Any]:
    """One multi-round run (a sweep unit): ``{"rows": its metric rows}``."""
    from bow_gym.rounds import load_config, run_rounds

    return {"rows": run_rounds(load_config(config, **overrides), run_dir, resume=resume)}


def parse_seeds(value: Any, where: str) -> list[int]:
    """Seeds from ``"0,1,2"``, ``[0, 1, 2]`` or a count ``3`` (0, 1, 2).

    Raises:
        ValueError: Anything else (naming ``where``).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        seeds = list(range(value)) if value >= 1 else []
    elif isinstance(value, str):
        try:
            seeds = [int(s) for s in value.split(",") if s.strip()]
        except ValueError:
            seeds = []
    elif isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool)
                                         for s in value):
        seeds = list(value)
    else:
        seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"{where}: expected distinct integer seeds (0,1,2 or a list or a count "
                         f">= 1), got {value!r}")
    return seeds


def read_rounds_sweep(path: str | os.PathLike) -> tuple[list[int] | None,
                                                        dict[str, dict[str, Any]] | None,
                                                        dict[str, Any]]:
    """A rounds sweep file: (seeds or ``None``, variants or ``None``, scheduler keys).

    Raises:
        ValueError: Unknown keys or malformed values (naming the file).
    """
    data = read_sweep_file(path)
    unknown = sorted(set(data) - {*FILE_KEYS, *SCHEDULER_KEYS})
    if unknown:
        raise ValueError(f"--sweep {path}: unknown key(s) {unknown}; a rounds sweep takes "
                         f"{', '.join([*FILE_KEYS, *SCHEDULER_KEYS])}")
    seeds = parse_seeds(data["seeds"], f"--sweep {path}: seeds") if "seeds" in data else None
    variants = data.get("variants")
    if variants is not None and (not isinstance(variants, dict) or not variants or not all(
            isinstance(v, dict) for v in variants.values())):
        raise ValueError(f"--sweep {path}: variants must be tables of config fields, "
                         "[variants.<name>]")
    for name in variants or {}:
        if not name or not all(c.isalnum() or c in "_-." for c in name):
            raise ValueError(f"--sweep {path}: variant name {name!r}: letters, digits, _ - .")
    scheduler = {k: v for k, v in data.items() if k in SCHEDULER_KEYS}
    return seeds, variants, scheduler


def rounds_units(config: str, base: Mapping[str, Any], seeds: Sequence[int],
                 variants: Mapping[str, Mapping[str, Any]] | None, out: Path,
                 resume: bool = True) -> list[SweepUnit]:
    """One unit per variant and seed; every config is checked here, before any runs."""
    from bow_gym.rounds import load_config

    units = []
    for variant, fields in (variants or {"base": {}}).items():
        for seed in seeds:
            name = f"{variant}-s{seed}"
            overrides = {**base, **fields, "seed": seed, "name": name, "progress": False}
            load_config(config, **overrides)  # a bad field fails now, naming it
            units.append(SweepUnit(name, rounds_unit, {
                "config": config, "overrides": overrides, "run_dir": str(out / name),
                "resume": resume}, {"config": str(config), "overrides": overrides}))
    return units


def run_rounds_sweep(config: str, base: Mapping[str, Any], seeds: Sequence[int],
                     variants: Mapping[str, Mapping[str, Any]] | None, out: str | os.PathLike,
                     options: SweepOptions) -> list[dict[str, Any]]:
    """Runs every variant x seed; returns all metric rows with ``variant`` and ``seed`` and
    writes them to ``<out>/sweep.csv``."""
    from bow_gym.io_utils import write_csv

    out = Path(out)
    units = rounds_units(config, base, seeds, variants, out, resume=options.resume)
    from tqdm.auto import tqdm

    results = run_sweep(units, out, options, on_result=lambda u, r, reused: tqdm.write(
        f"  {u.key}: {len(r['rows'])} rows" + (" (reused)" if reused else "")))
    rows = []
    for unit, result in zip(units, results, strict=True):
        variant, seed = unit.key.rsplit("-s", 1)
        rows += [{"variant": variant, "seed": int(seed), **row} for row in result["rows"]]
    write_csv(out / "sweep.csv", rows)
    return rows
