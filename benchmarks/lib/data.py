"""Which data a benchmark runs on: ``--dataset NAME [--root PATH]``, repeatable.

Any data set registered in :mod:`bow_gym.datasets` can be named. ``--root`` gives the folder of
the data set named just before it; without one, a file-based data set is looked for in its usual
folder under the real-data folder (``--data``, ``$BOW_GYM_SHARED_DATA`` or ``../shared/data``:
:data:`DEFAULT_FOLDERS`) and skipped with a note when it is not there. ``--eval-dataset NAME
[--root PATH]`` (scripts that train agents) also evaluates the agents trained on each
``--dataset`` on every image of another data set: cross-data-set transfer, e.g. Kvasir-SEG to
CVC-ClinicDB, the method's polyp setting. Rows of such an evaluation are labelled
``<train>-><eval>`` (``kvasir-seg->cvc-clinicdb``).

``--datasets a,b`` (comma-separated, no roots) is the deprecated spelling of ``--dataset a
--dataset b``.
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.lib.results import PROJECT

#: Where each file-based data set lies under the real-data folder when ``--root`` is not given.
DEFAULT_FOLDERS = {"kvasir-seg": "kvasir-seg", "cvc-clinicdb": "CVC-ClinicDB",
                   "busi": "Dataset_BUSI_with_GT", "isic2018": "ISIC2018"}
#: Data-set arguments every benchmark uses unless a script says otherwise.
DEFAULT_KWARGS: dict[str, dict[str, Any]] = {"synthetic": {"n_images": 200}}
#: The data sets of a benchmark without ``--dataset``.
DEFAULT_DATASETS = ("synthetic", "kvasir-seg")


@dataclass(frozen=True)
class DataSource:
    """One data set of a run.

    Attributes:
        name: Registered name (:func:`bow_gym.datasets.list_datasets`).
        root: Its folder (``None`` for generated data sets).
        kwargs: Its other arguments (``n_images`` of the synthetic set, ``limit``, ...).
    """

    name: str
    root: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def env_kwargs(self, **dataset_kwargs: Any) -> dict[str, Any]:
        """``gym.make`` arguments of this data set, with more data-set arguments (``split``)."""
        return {"dataset": self.name, "root": self.root,
                "dataset_kwargs": {**self.kwargs, **dataset_kwargs}}


def shared_data(override: str | None = None) -> Path | None:
    """The real-data folder: ``override`` (``--data``), ``$BOW_GYM_SHARED_DATA`` or ``../shared/data``.

    A folder that is named (by ``--data`` or the variable) but does not exist is an error, not a
    reason to fall back to another one: results would silently come from other data. A relative
    ``$BOW_GYM_SHARED_DATA`` is tried from the working directory, then from the project root (as
    the tests do). Only the unnamed default may be missing (``None``: real data sets are skipped).

    Raises:
        FileNotFoundError: ``override`` or ``$BOW_GYM_SHARED_DATA`` is not a folder.
    """
    if override:
        if not Path(override).is_dir():
            raise FileNotFoundError(f"--data {override}: no such folder (expected the real-data "
                                    "folder that holds kvasir-seg/, see ../shared/data/README.md)")
        return Path(override)
    configured = os.environ.get("BOW_GYM_SHARED_DATA", "").strip()
    if configured:
        for cand in (Path(configured), PROJECT / configured):
            if cand.is_dir():
                return cand
        raise FileNotFoundError(f"BOW_GYM_SHARED_DATA={configured!r}: no such folder (tried from "
                                f"the working directory and from {PROJECT}); unset it or point "
                                "it at the real-data folder")
    default = PROJECT.parent / "shared" / "data"
    return default if default.is_dir() else None


def data_folder(parser: argparse.ArgumentParser, override: str | None) -> Path | None:
    """:func:`shared_data`, with a named but missing folder as the CLI's usage error."""
    try:
        return shared_data(override)
    except FileNotFoundError as err:
        parser.error(str(err))


# --------------------------------------------------------------------------- the arguments
class _DatasetAction(argparse.Action):
    """``--dataset NAME`` / ``--eval-dataset NAME``: one more ``[role, name, root]`` entry."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        entries = list(getattr(namespace, self.dest, None) or [])
        entries.append([self.const, values, None])
        setattr(namespace, self.dest, entries)


class _RootAction(argparse.Action):
    """``--root PATH``: the folder of the data set named just before."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        entries = getattr(namespace, self.dest, None) or []
        if not entries or entries[-1][2] is not None:
            parser.error("--root PATH must follow the --dataset NAME (or --eval-dataset NAME) "
                         "it is the folder of, once")
        entries[-1][2] = values


class _DeprecatedDatasets(argparse.Action):
    """``--datasets a,b``: the old spelling of ``--dataset a --dataset b``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warnings.warn("--datasets is deprecated: use --dataset NAME [--root PATH], repeatable",
                      FutureWarning, stacklevel=2)
        names = [n.strip() for n in values.split(",") if n.strip()]
        if not names:
            parser.error(f"--datasets: expected comma-separated data set names, got {values!r}")
        entries = list(getattr(namespace, self.dest, None) or [])
        entries += [["train", n, None] for n in names]
        setattr(namespace, self.dest, entries)


def add_data_arguments(parser: argparse.ArgumentParser,
                       default: Sequence[str] = DEFAULT_DATASETS, transfer: bool = False) -> None:
    """The data-set arguments of a benchmark (see the module docstring).

    Args:
        parser: The script's parser.
        default: The data sets without ``--dataset``.
        transfer: Also offer ``--eval-dataset`` (scripts that train agents).
    """
    from bow_gym.datasets import list_datasets

    group = parser.add_argument_group("data sets")
    group.add_argument("--dataset", action=_DatasetAction, const="train", dest="sources",
                       metavar="NAME",
                       help="a data set to run on, repeatable; any of " + ", ".join(list_datasets())
                            + f" (default: {', '.join(default)}; a real one that is not found "
                            "is skipped with a note)")
    group.add_argument("--root", action=_RootAction, dest="sources", metavar="PATH",
                       help="folder of the data set named just before (default: its usual folder "
                            "under --data: " + ", ".join(f"{k} in {v}/"
                                                         for k, v in DEFAULT_FOLDERS.items()) + ")")
    if transfer:
        group.add_argument("--eval-dataset", action=_DatasetAction, const="eval", dest="sources",
                           metavar="NAME",
                           help="cross-data-set transfer, repeatable: also evaluate the agents "
                                "trained on each --dataset on every image of this data set "
                                "(rows <train>-><eval>, e.g. --dataset kvasir-seg --eval-dataset "
                                "cvc-clinicdb)")
    group.add_argument("--datasets", action=_DeprecatedDatasets, dest="sources",
                       help="deprecated: comma-separated names; use --dataset, repeatable")
    group.add_argument("--data", help="real-data folder (default $BOW_GYM_SHARED_DATA or "
                                      "../shared/data)")
    parser.set_defaults(sources=None, _default_datasets=tuple(default))


def data_sources(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 kwargs: dict[str, dict[str, Any]] | None = None
                 ) -> tuple[list[DataSource], list[DataSource]]:
    """The checked data sets of :func:`add_data_arguments`: ``(train, eval)`` sources.

    Every named data set is built once (file lists only) so that an unknown name, a missing
    ``--root``, a bad layout or an empty selection is a usage error before anything is written.

    Args:
        parser: The script's parser (for its usage errors).
        args: Its parsed arguments.
        kwargs: Data-set arguments by name (default :data:`DEFAULT_KWARGS`).

    Raises:
        SystemExit: Status 2 with a message naming the argument, on any of the above.
    """
    from bow_gym.datasets import DatasetError, list_datasets, make_dataset

    kwargs = DEFAULT_KWARGS if kwargs is None else kwargs
    entries = args.sources or [["train", name, None] for name in args._default_datasets]
    folder = data_folder(parser, args.data)
    train: list[DataSource] = []
    evals: list[DataSource] = []
    for role, name, root in entries:
        flag = "--dataset" if role == "train" else "--eval-dataset"
        key = name.strip().lower().replace("_", "-")
        if key not in list_datasets():
            parser.error(f"{flag}: unknown data set {name!r}; registered: "
                         f"{', '.join(list_datasets())}")
        if root is None and key in DEFAULT_FOLDERS:
            found = folder / DEFAULT_FOLDERS[key] if folder is not None else None
            if found is None or not found.is_dir():
                print(f"{key} not found (pass --root after {flag} {name}, or set --data / "
                      "BOW_GYM_SHARED_DATA): skipped")
                continue
            root = str(found)
        elif root is not None and not Path(root).is_dir():
            parser.error(f"--root {root}: no such folder (the {key} data set)")
        source = DataSource(key, root, dict(kwargs.get(key, {})))
        try:
            make_dataset(source.name, source.root, **source.kwargs)
        except (ValueError, FileNotFoundError, DatasetError) as e:
            parser.error(f"{flag} {name}: {e}")
        (train if role == "train" else evals).append(source)
    names = [s.name for s in train]
    if len(set(names)) < len(names):
        parser.error(f"--dataset: a data set is named twice in {names}")
    if not train:
        parser.error("--dataset: nothing to evaluate (no data set named was found)")
    return train, evals


# --------------------------------------------------------------------------- splits
def data_configs(sources: Sequence[DataSource], transductive: bool = False, split_seed: int = 0,
                 validation: bool = False, evals: Sequence[DataSource] = ()
                 ) -> dict[str, dict[str, Any]]:
    """Per data set, what a run on its seeded split needs.

    * ``train``, ``test``: ``gym.make`` arguments of the two parts (80/20 held out; ``fit`` and
      ``val`` inside the training part with ``validation``; all images twice with
      ``transductive``);
    * ``trainer``: the data fields of the trainers' arguments (:class:`agents.common.TrainArgs`)
      for the training part;
    * ``transfer``: ``{"<name>-><eval>": gym.make arguments}`` of every image of each ``evals``
      data set.
    """
    train_split, test_split = (("all", "all") if transductive else
                               ("fit", "val") if validation else ("train", "test"))
    cfgs: dict[str, dict[str, Any]] = {}
    for s in sources:
        ds_kwargs = {**s.kwargs, "split_seed": split_seed}
        cfgs[s.name] = {
            "train": s.env_kwargs(split_seed=split_seed, split=train_split),
            "test": s.env_kwargs(split_seed=split_seed, split=test_split),
            "trainer": {"dataset": s.name, "root": s.root,
                        "env_kwargs": {"dataset_kwargs": ds_kwargs}, "split": train_split},
            "transfer": {f"{s.name}->{e.name}": e.env_kwargs() for e in evals},
        }
    return cfgs


def evaluation_sets(name: str, cfg: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, gym.make arguments)`` of everything a run on ``cfg`` is evaluated on: its test
    part (labelled ``name``), then each transfer data set."""
    return [(name, cfg["test"]), *cfg.get("transfer", {}).items()]


def protocol_name(transductive: bool = False, validation: bool = False,
                  transfer: bool = False) -> str:
    """The protocol a run.json records: ``heldout``, ``transductive`` or ``validation``, with
    ``+transfer`` when other data sets were evaluated too."""
    base = "transductive" if transductive else "validation" if validation else "heldout"
    return base + ("+transfer" if transfer else "")
