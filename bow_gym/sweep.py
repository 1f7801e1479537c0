"""Sweeps: many independent units of work (one training and its evaluation each), scheduled by one
code path, one after another, in a pool of processes, or as Ray tasks.

A :class:`SweepUnit` is a module-level function, its keyword arguments and the settings its result
depends on; it returns a JSON-able dict. :func:`run_sweep` runs a list of units and returns their
results in order. The benchmarks (``compare_policies``, ``click_budget``, ``ablation``,
``sweep_scaling``) and ``bow-gym rounds --seeds/--sweep`` build their units and hand them here.

Backends (:class:`SweepOptions`)
--------------------------------
* ``sequential``: in this process, one unit after another (the default with ``jobs=1``);
* ``pool``: ``jobs`` spawned processes on this machine (``concurrent.futures``): the fallback
  without Ray (the default with ``jobs > 1``);
* ``ray``: Ray tasks (``pip install "bow-gym[ray]"``), on a local Ray started for the sweep
  (``ray.init(num_cpus=jobs, include_dashboard=False)`` on 127.0.0.1 only, stopped after it) or
  on an existing cluster (``ray_address``, e.g. ``10.0.0.5:6379``; the default backend when it
  is given).

What every backend guarantees
-----------------------------
* **Results as units finish.** This process (the driver) writes each unit's result to
  ``<out>/<key>.json`` as soon as it arrives, atomically (temporary file, then rename), with the
  unit's settings; it is the only writer of result files, so a unit whose first attempt died
  and was run again is written once. What the unit printed goes to ``<out>/logs/<key>.log``.
* **Resuming.** A unit whose result file exists with the same settings is not run again (its
  saved result is returned, and reported as reused); one made with other settings is run again,
  and the sweep says so.
* **Retries.** A unit whose worker process dies (killed, out of memory, its node lost) is run
  again, up to ``retries`` more times: Ray's ``max_retries`` for Ray tasks; the pool is rebuilt
  for the units it had not returned. An exception raised by the unit itself is not retried (it
  would fail again): it is written to the unit's log, the other units go on, and
  :class:`SweepError` names the failed units at the end.
* **Same numbers.** A unit runs the same function with the same arguments and ``threads`` torch
  threads in every backend, so results are identical to running the units one after another
  (``tests/test_sweep.py`` checks it); they come back through JSON in every case, so a reused
  result equals a fresh one.

Progress: one bar for the sweep (units done); the units' own progress bars and prints go to
their logs.

Sweep files
-----------
A sweep can be written as a TOML or JSON file and passed as ``--sweep FILE``: its keys stand for
the script's flags (:func:`sweep_file_argv`; e.g. ``agents``, ``seeds``, ``splits``,
``datasets``, ``budgets``, and ``backend``, ``jobs``, ``ray_address``, ``retries``), and flags
given on the command line win over the file. ``docs/scaling.md`` has examples.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bow_gym.io_utils import _json_default, atomic_write_bytes

__all__ = ["BACKENDS", "SCHEDULER_KEYS", "SweepError", "SweepOptions", "SweepUnit",
           "add_sweep_arguments", "read_sweep_file", "run_sweep", "sweep_file_argv",
           "sweep_options"]

#: The scheduling backends, in order of reach.
BACKENDS = ("sequential", "pool", "ray")
#: Sweep-file keys every script with :func:`add_sweep_arguments` takes, and their flags.
SCHEDULER_KEYS = {"backend": "--backend", "jobs": "--jobs", "ray_address": "--ray-address",
                  "retries": "--retries", "threads": "--threads"}
#: Keys a result file adds around a unit's result.
_RESERVED = ("unit", "settings")


class SweepError(RuntimeError):
    """Units of a sweep failed (the others finished and were saved); the message names each
    failed unit, why, and its log file."""


@dataclass(frozen=True)
class SweepUnit:
    """One unit of a sweep.

    Attributes:
        key: Its name and where its result goes: ``<out>/<key>.json`` (``/`` makes folders;
            letters, digits and ``_ . , + - =`` otherwise).
        fn: A module-level function (importable by worker processes), called as
            ``fn(**kwargs)``; it returns a JSON-able dict without the keys ``unit`` and
            ``settings``.
        kwargs: Its keyword arguments (picklable).
        settings: What the result depends on besides the key (JSON-able): a saved result is
            reused only when its settings are equal.
    """

    key: str
    fn: Callable[..., dict[str, Any]]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def result_path(self, out: Path) -> Path:
        """Where its result is saved."""
        return Path(out) / f"{self.key}.json"

    def log_path(self, out: Path) -> Path:
        """Where what it printed is saved."""
        return Path(out) / "logs" / f"{self.key}.log"


@dataclass
class SweepOptions:
    """How a sweep is scheduled (the flags of :func:`add_sweep_arguments`).

    Attributes:
        backend: ``"sequential"``, ``"pool"``, ``"ray"``, or ``None``: ``ray`` when
            ``ray_address`` is given, else ``pool`` when ``jobs > 1``, else ``sequential``.
        jobs: Units at once on this machine: pool processes, or the CPUs of the local Ray.
        ray_address: An existing Ray cluster (``host:port``); ``None`` starts a local Ray.
        threads: Torch threads of each unit (default: ``cpu_count // jobs`` on this machine,
            ``cpus_per_unit`` on a cluster; the sequential backend leaves torch's setting
            unless given).
        cpus_per_unit: CPUs Ray reserves for each unit.
        retries: Runs of a unit after its worker died (not after an exception of its own).
        resume: Reuse saved results with the same settings.
        progress: Show the sweep's bar.
    """

    backend: str | None = None
    jobs: int = 1
    ray_address: str | None = None
    threads: int | None = None
    cpus_per_unit: float = 1.0
    retries: int = 3
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.backend is not None and self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be an int >= 1, got {self.jobs!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {self.retries!r}")
        if not self.cpus_per_unit > 0:
            raise ValueError(f"cpus_per_unit must be > 0, got {self.cpus_per_unit!r}")
        if self.ray_address is not None and self.backend not in (None, "ray"):
            raise ValueError(f"ray_address needs the ray backend, not {self.backend!r}")

    @property
    def resolved_backend(self) -> str:
        """The backend the sweep uses."""
        if self.backend:
            return self.backend
        if self.ray_address:
            return "ray"
        return "pool" if self.jobs > 1 else "sequential"

    def unit_threads(self) -> int | None:
        """Torch threads of each unit (``None``: leave torch's setting)."""
        if self.threads is not None:
            return self.threads
        backend = self.resolved_backend
        if backend == "sequential":
            return None
        if backend == "ray" and self.ray_address:
            return max(1, math.floor(self.cpus_per_unit))
        return max(1, (os.cpu_count() or 1) // self.jobs)


# --------------------------------------------------------------------------- running a unit
def execute_unit(fn: Callable[..., dict[str, Any]], kwargs: Mapping[str, Any],
                 threads: int | None) -> dict[str, Any]:
    """Runs one unit where it is scheduled: its prints captured, its exception caught.

    Returns:
        ``{"ok": bool, "result": dict | None, "error": str | None, "log": str, "seconds": float,
        "host": str, "pid": int}``.
    """
    old_threads = None
    if threads is not None:
        import torch

        old_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
    buf = io.StringIO()
    start = time.perf_counter()
    result, error = None, None
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            result = fn(**kwargs)
        if not isinstance(result, dict) or any(k in result for k in _RESERVED):
            raise TypeError(f"a sweep unit must return a dict without the keys {_RESERVED}; "
                            f"{getattr(fn, '__qualname__', fn)} returned "
                            f"{type(result).__name__}")
    except Exception:
        error, result = traceback.format_exc(), None
    finally:
        if old_threads is not None:
            import torch

            torch.set_num_threads(old_threads)
    return {"ok": error is None, "result": result, "error": error, "log": buf.getvalue(),
            "seconds": time.perf_counter() - start, "host": platform.node(), "pid": os.getpid()}


def _worker_init(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- the driver
class _Driver:
    """Writes results and logs as units end, keeps the bar and the failures."""

    def __init__(self, units: Sequence[SweepUnit], out: Path, options: SweepOptions,
                 on_result: Callable[[SweepUnit, dict[str, Any], bool], None] | None) -> None:
        from tqdm.auto import tqdm

        self.units, self.out, self.options, self.on_result = units, out, options, on_result
        self.results: list[dict[str, Any] | None] = [None] * len(units)
        self.failures: dict[int, str] = {}
        self.tqdm = tqdm
        self.bar = None

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.tqdm.write(text, file=sys.stdout)
        else:
            print(text)
        sys.stdout.flush()

    def load_saved(self) -> None:
        for i, unit in enumerate(self.units):
            path = unit.result_path(self.out)
            if not self.options.resume or not path.is_file():
                continue
            try:
                saved = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                self.write(f"  {path}: unreadable ({e}): run again")
                continue
            settings = json.loads(json.dumps(dict(unit.settings), default=_json_default))
            if saved.get("settings") != settings:
                self.write(f"  {path}: made with other settings ({saved.get('settings')}): "
                           "run again")
                continue
            self.results[i] = {k: v for k, v in saved.items() if k not in _RESERVED}
            if self.on_result is not None:
                self.on_result(unit, self.results[i], True)

    def start_bar(self, todo: int) -> None:
        n = len(self.units)
        self.bar = self.tqdm(total=n, initial=n - todo, unit="unit", file=sys.stderr,
                             desc=f"sweep ({self.options.resolved_backend})",
                             disable=not self.options.progress)

    def finish(self, i: int, status: dict[str, Any], attempts: str = "") -> None:
        """A unit came back: its log, and its result (written once) or its failure."""
        unit = self.units[i]
        head = (f"# unit {unit.key}: {'ok' if status['ok'] else 'FAILED'} in "
                f"{status['seconds']:.1f} s on {status['host']} (pid {status['pid']}){attempts}\n")
        tail = "" if status["ok"] else f"\n{status['error']}"
        atomic_write_bytes(unit.log_path(self.out), (head + status["log"] + tail).encode())
        if not status["ok"]:
            last = status["error"].strip().splitlines()[-1] if status["error"] else "?"
            self.fail(i, last)
            return
        if self.results[i] is not None:  # a second delivery of a finished unit: keep the first
            return
        record = {"unit": unit.key, "settings": dict(unit.settings), **status["result"]}
        text = json.dumps(record, indent=1, default=_json_default)
        atomic_write_bytes(unit.result_path(self.out), text.encode())
        saved = json.loads(text)
        self.results[i] = {k: v for k, v in saved.items() if k not in _RESERVED}
        if self.on_result is not None:
            self.on_result(unit, self.results[i], False)
        self.advance(unit)

    def fail(self, i: int, why: str) -> None:
        unit = self.units[i]
        self.failures[i] = why
        log = unit.log_path(self.out)
        if not log.is_file():
            atomic_write_bytes(log, f"# unit {unit.key}: FAILED\n{why}\n".encode())
        self.write(f"  unit {unit.key} FAILED: {why} (log: {log})")
        self.advance(unit)

    def advance(self, unit: SweepUnit) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(unit.key[-40:])

    def close(self) -> list[dict[str, Any]]:
        if self.bar is not None:
            self.bar.close()
        if self.failures:
            lines = [f"  {self.units[i].key}: {why} (log {self.units[i].log_path(self.out)})"
                     for i, why in sorted(self.failures.items())]
            done = sum(r is not None for r in self.results)
            raise SweepError(f"{len(self.failures)} of {len(self.units)} units failed ({done} "
                             f"finished and saved under {self.out}; a re-run runs only the "
                             "others):\n" + "\n".join(lines))
        return [r for r in self.results if r is not None]


def run_sweep(units: Sequence[SweepUnit], out: str | os.PathLike,
              options: SweepOptions | None = None,
              on_result: Callable[[SweepUnit, dict[str, Any], bool], None] | None = None
              ) -> list[dict[str, Any]]:
    """Runs every unit (see the module docstring) and returns their results, in order.

    Args:
        units: The units; keys must be unique.
        out: The sweep's folder (results ``<out>/<key>.json``, logs ``<out>/logs/``).
        options: Backend, parallelism, retries, resuming, progress (default: sequential).
        on_result: Called in this process as each result arrives or is reused:
            ``on_result(unit, result, reused)`` (print a line with :func:`tqdm.write`-safe
            ``print``; the bar is redrawn below it).

    Raises:
        ValueError: Duplicate or malformed keys.
        SweepError: Some units failed (after their retries); the others' results are saved.
        ImportError: The ray backend without Ray installed (``pip install "bow-gym[ray]"``).
    """
    options = options or SweepOptions()
    out = Path(out)
    keys = [u.key for u in units]
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise ValueError(f"sweep units need unique keys; repeated: {dup}")
    for key in keys:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") for p in parts) or any(
                not all(c.isalnum() or c in "_.,+-=" for c in p) for p in parts):
            raise ValueError(f"sweep unit key {key!r}: expected folder names joined by '/' "
                             "(letters, digits, _ . , + - =)")
    driver = _Driver(units, out, options, on_result)
    driver.load_saved()
    todo = [i for i, r in enumerate(driver.results) if r is None]
    backend = options.resolved_backend
    if todo and backend == "ray":
        _require_ray()
    driver.start_bar(len(todo))
    try:
        if todo:
            {"sequential": _run_sequential, "pool": _run_pool, "ray": _run_ray}[backend](
                driver, todo)
    except BaseException:
        if driver.bar is not None:
            driver.bar.close()
        raise
    return driver.close()


def _run_sequential(driver: _Driver, todo: list[int]) -> None:
    threads = driver.options.unit_threads()
    for i in todo:
        unit = driver.units[i]
        driver.finish(i, execute_unit(unit.fn, dict(unit.kwargs), threads))


def _run_pool(driver: _Driver, todo: list[int]) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    options = driver.options
    threads = options.unit_threads()
    runs = dict.fromkeys(todo, 0)
    while todo:
        broken: list[int] = []
        # spawn, not fork: a forked child inherits torch's thread pool in an undefined state.
        with ProcessPoolExecutor(max_workers=min(options.jobs, len(todo)),
                                 mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init, initargs=(threads,)) as pool:
            futures = {pool.submit(execute_unit, driver.units[i].fn, dict(driver.units[i].kwargs),
                                   threads): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                runs[i] += 1
                try:
                    status = future.result()
                except BrokenProcessPool:
                    # A worker died: every unit the pool had not returned is run again.
                    broken.append(i)
                    continue
                driver.finish(i, status, f"; run {runs[i]}")
        todo = []
        for i in sorted(broken):
            if runs[i] > options.retries:
                driver.fail(i, f"its worker process died {runs[i]} times")
            else:
                todo.append(i)
        if todo:
            driver.write(f"  a worker process died: running {len(todo)} unfinished unit(s) "
                         "again")


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError as e:
        raise ImportError("the ray backend needs Ray: pip install 'bow-gym[ray]' (or "
                          "--backend pool / sequential)") from e


def _code_roots(driver: _Driver) -> list[str]:
    """Folders that hold the units' top-level packages (for the workers' ``sys.path``)."""
    roots = []
    for unit in driver.units:
        module = sys.modules.get(getattr(unit.fn, "__module__", ""), None)
        path = getattr(module, "__file__", None)
        if path is None:
            continue
        depth = unit.fn.__module__.count(".") + 1 + (Path(path).name == "__init__.py")
        root = Path(path).resolve().parents[depth - 1]
        if str(root) not in roots:
            roots.append(str(root))
    return roots


def _run_ray(driver: _Driver, todo: list[int]) -> None:
    import ray

    from bow_gym.ray_cluster import LOOPBACK, is_loopback, keep_loopback

    options = driver.options
    threads = options.unit_threads()
    connected_here = not ray.is_initialized()
    # A local Ray started for the sweep serves this machine only: it stays on 127.0.0.1.
    loopback = is_loopback(options.ray_address) or not options.ray_address
    with contextlib.ExitStack() as stack:
        if loopback:
            stack.enter_context(keep_loopback())
        if connected_here:
            from ray.job_config import JobConfig

            job = JobConfig(code_search_path=_code_roots(driver))
            kwargs: dict[str, Any] = {"job_config": job, "log_to_driver": False,
                                      "include_dashboard": False}
            if loopback:
                kwargs["_node_ip_address"] = LOOPBACK
            if options.ray_address:
                kwargs.pop("include_dashboard")
                ray.init(address=options.ray_address, **kwargs)
            else:
                ray.init(num_cpus=options.jobs, **kwargs)
        try:
            task = ray.remote(num_cpus=options.cpus_per_unit, max_retries=options.retries,
                              retry_exceptions=False)(execute_unit)
            refs = {task.options(name=f"unit {driver.units[i].key}").remote(
                driver.units[i].fn, dict(driver.units[i].kwargs), threads): i for i in todo}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    i = refs.pop(ref)
                    try:
                        status = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        # Only system failures reach here (the unit's own exception is caught
                        # in execute_unit): its worker or node died more than `retries` times.
                        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                        driver.fail(i, f"{type(e).__name__} after {options.retries} retries: "
                                       f"{first[:300]}")
                        continue
                    driver.finish(i, status)
        finally:
            if connected_here:
                ray.shutdown()


# --------------------------------------------------------------------------- command lines
def add_sweep_arguments(parser: argparse.ArgumentParser, *, file_keys: Sequence[str] = (),
                        resume: bool = True) -> None:
    """The scheduling flags: ``--backend``, ``--jobs``, ``--ray-address``, ``--threads``,
    ``--retries``, ``--resume/--no-resume`` (unless ``resume=False``: the parser has its own),
    and ``--sweep FILE`` (whose keys are ``file_keys`` and :data:`SCHEDULER_KEYS`)."""
    group = parser.add_argument_group("scheduling (bow_gym.sweep; docs/scaling.md)")
    group.add_argument("--backend", choices=BACKENDS,
                       help="how units run: sequential, pool (--jobs processes here) or ray "
                            "(default: ray with --ray-address, else pool with --jobs > 1, else "
                            "sequential)")
    group.add_argument("--jobs", type=int, default=1,
                       help="units at once on this machine: pool processes or local Ray CPUs, "
                            "each unit with cpu_count // jobs torch threads (default 1)")
    group.add_argument("--ray-address", metavar="HOST:PORT",
                       help="run the units on this existing Ray cluster (implies --backend ray)")
    group.add_argument("--threads", type=int, help="torch threads of each unit")
    group.add_argument("--retries", type=int, default=3,
                       help="runs of a unit after its worker process or node died (default 3)")
    if resume:
        group.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                           help="reuse the results of finished units saved under the output "
                                "folder with the same settings (default: %(default)s)")
    keys = ", ".join([*file_keys, *SCHEDULER_KEYS])
    group.add_argument("--sweep", metavar="FILE",
                       help=f"a TOML or JSON file standing for flags; its keys: {keys} "
                            "(flags on the command line win)")


def sweep_options(parser: argparse.ArgumentParser, args: argparse.Namespace,
                  progress: bool = True) -> SweepOptions:
    """The :class:`SweepOptions` of :func:`add_sweep_arguments`' flags (bad values: the
    parser's usage error, naming the flag)."""
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.retries < 0:
        parser.error(f"--retries must be >= 0, got {args.retries}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.ray_address and args.backend not in (None, "ray"):
        parser.error(f"--ray-address needs --backend ray, not {args.backend}")
    return SweepOptions(backend=args.backend, jobs=args.jobs, ray_address=args.ray_address,
                        threads=args.threads, retries=args.retries,
                        resume=getattr(args, "resume", True), progress=progress)


def read_sweep_file(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep file's table (TOML ``.toml`` or JSON ``.json``).

    Raises:
        SystemExit: Missing, unreadable, or another format (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"--sweep {path}: no such file")
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise SystemExit(f"--sweep {path}: expected a .toml or .json file")
    except (ValueError, OSError) as e:
        raise SystemExit(f"--sweep {path}: not readable as {path.suffix[1:].upper()}: {e}") from e
    if not isinstance(data, dict):
        raise SystemExit(f"--sweep {path}: expected a table of keys, got {type(data).__name__}")
    return data


def _flag_value(path: Path, key: str, value: Any) -> list[str] | None:
    """A scalar or list as one flag value (lists comma-joined); ``None`` for ``false``."""
    if isinstance(value, bool):
        return [] if value else None
    if isinstance(value, int | float | str):
        return [str(value)]
    if isinstance(value, list) and value and all(
            isinstance(v, int | float | str) and not isinstance(v, bool) for v in value):
        return [",".join(str(v) for v in value)]
    raise SystemExit(f"--sweep {path}: {key} = {value!r}: expected a number, a string, true/false "
                     "or a non-empty list of numbers or strings")


def sweep_file_argv(argv: Sequence[str], keys: Mapping[str, str]) -> list[str]:
    """``argv`` with the flags its ``--sweep FILE`` stands for put first.

    Args:
        argv: The command line as typed.
        keys: File key -> flag, for the keys this script takes besides :data:`SCHEDULER_KEYS`
            (``{"agents": "--agents", "datasets": "--dataset", ...}``). Lists become
            comma-separated values, except for ``--dataset``/``--eval-dataset``, repeated once
            per entry (an entry is a name or a table ``{name = ..., root = ...}``); ``true``
            becomes the bare flag, ``false`` nothing.

    Flags on the command line win: a key whose flag ``argv`` also gives is left out.

    Raises:
        SystemExit: An unknown key or a malformed value (naming the file and the key).
    """
    argv = list(argv)
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--sweep"]
    files += [a.split("=", 1)[1] for a in argv if a.startswith("--sweep=")]
    if not files:
        return argv
    if len(files) > 1:
        raise SystemExit("--sweep: give one sweep file")
    path = Path(files[0])
    data = read_sweep_file(path)
    allowed = {**keys, **SCHEDULER_KEYS}
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise SystemExit(f"--sweep {path}: unknown key(s) {unknown}; this script takes "
                         f"{', '.join(allowed)}")
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra: list[str] = []
    for key, value in data.items():
        flag = allowed[key]
        if flag in given:
            continue
        if flag in ("--dataset", "--eval-dataset"):
            entries = value if isinstance(value, list) else [value]
            for entry in entries:
                if isinstance(entry, str):
                    extra += [flag, entry]
                elif isinstance(entry, dict) and isinstance(entry.get("name"), str) and set(
                        entry) <= {"name", "root"}:
                    extra += [flag, entry["name"]] + (
                        ["--root", str(entry["root"])] if entry.get("root") else [])
                else:
                    raise SystemExit(f"--sweep {path}: {key}: expected names or tables "
                                     f"{{name = ..., root = ...}}, got {entry!r}")
            continue
        values = _flag_value(path, key, value)
        if values is not None:
            extra += [flag, *values]
    return extra + argv
