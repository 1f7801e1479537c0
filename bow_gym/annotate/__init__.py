"""``bow-gym annotate``: a real expert says "better" or "worse" in the browser.

A local web app (Flask) serves one page. A person sees an image, the current mask and the click
the agent proposes with exactly the region it would change, and answers with B/W (or buttons);
the answer goes through the same :class:`~bow_gym.envs.BetterWorseSegEnv` step (with a
:class:`~bow_gym.oracles.PersonOracle`) and the agent learns from it online, as with a simulated
expert. Everything lives in one SQLite database (:mod:`.store`); the state is rebuilt from it
after a restart (:mod:`.engine`). See ``docs/annotate.md``.
"""

from bow_gym.annotate.project import ApiError, Project

__all__ = ["ApiError", "Project"]
