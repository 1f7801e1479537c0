"""The benchmarks' library: what every script in ``benchmarks/`` shares.

The scripts (``python -m benchmarks.<script>``) import this package and never each other:

* :mod:`benchmarks.lib.data`: which data sets a run uses (``--dataset NAME --root PATH``,
  repeatable, any data set registered in :mod:`bow_gym.datasets`; ``--eval-dataset`` for
  cross-data-set transfer), their seeded splits and the env and trainer arguments of each part;
* :mod:`benchmarks.lib.learners`: the learners (every trainable agent of
  :mod:`bow_gym.agent_registry`, with ``NAME:field=value`` overrides), how they are trained on
  a budget of expert answers and evaluated greedily;
* :mod:`benchmarks.lib.results`: the results layout (``benchmarks/results/<script>/<run>/``), the
  ``run.json`` record written beside every run's tables, the machine description, figures;
* :mod:`benchmarks.lib.stats`: intervals over seeds and images;
* :mod:`benchmarks.lib.groundtruth`: images with empty ground truth reported apart (every table
  of a data set that has them gets ``<name>[non-empty-gt]`` and ``<name>[empty-gt]`` rows).

What every trainer shares (data, budget of answers, number of envs, seed, device, run folder,
TensorBoard, progress bar) is one dataclass, :class:`agents.common.TrainArgs`; the agents'
argument classes only add their own fields.

Installation
------------
``benchmarks`` is **not** installed as a package (``pyproject.toml`` lists only ``bow_gym*`` and
``agents*``): its scripts are run from a checkout with ``python -m benchmarks.<script>`` (the
working directory is then on ``sys.path``), they write into the checkout's
``benchmarks/results/``, and a top-level package named ``benchmarks`` in site-packages would
shadow or be shadowed by any other project's. The tests import it from the checkout
(``pythonpath = ["."]`` in pytest's settings).

``agents`` **is** installed: the agent registry's entry points (``"agents.reinforce:..."``) and
therefore ``bow-gym rounds`` need it importable from any working directory. The name is generic;
another distribution that also installs a top-level ``agents`` package (``openai-agents`` does)
cannot share an environment with bow-gym. Renaming it would break the project's layout
(``agents/`` beside ``bow_gym/``), so the clash is documented rather than avoided.
"""

from benchmarks.lib.data import (
    DEFAULT_FOLDERS,
    DataSource,
    add_data_arguments,
    data_configs,
    data_folder,
    data_sources,
    evaluation_sets,
    protocol_name,
    shared_data,
)
from benchmarks.lib.groundtruth import empty_ground_truth, labelled_groups, rounds_targets
from benchmarks.lib.learners import (
    LEVELS,
    add_answers_argument,
    clicks_to_90,
    evaluate,
    evaluate_by_ground_truth,
    is_reference,
    learner_spec,
    learner_specs,
    learners_help,
    run_name,
    train_learner,
)
from benchmarks.lib.results import (
    add_output_arguments,
    machine,
    save_figure,
    start_run,
    write_csv,
    write_json,
)
from benchmarks.lib.stats import bootstrap_ci, paired, t_interval

__all__ = [
    "DEFAULT_FOLDERS", "DataSource", "LEVELS", "add_answers_argument", "add_data_arguments",
    "add_output_arguments", "bootstrap_ci", "clicks_to_90", "data_configs", "data_folder",
    "data_sources", "empty_ground_truth", "evaluate", "evaluate_by_ground_truth",
    "evaluation_sets", "is_reference", "labelled_groups", "learner_spec", "learner_specs",
    "learners_help", "machine", "paired", "protocol_name", "rounds_targets", "run_name", "save_figure",
    "shared_data", "start_run", "t_interval", "train_learner", "write_csv", "write_json",
]
