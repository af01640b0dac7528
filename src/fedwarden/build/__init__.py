"""Building a run: a config turned into its objects, deployed, run and summarized.

``models``, ``pipeline``, ``privacy`` and ``attacks`` build the parts a
config names; :func:`~fedwarden.build.server.build_server` assembles every
server of a config (a run's, a cluster's, an audit's); ``deployment`` is
where a run lives (store, runtime, audit trail); ``run`` is the run loop
(prepare, run, resume, serve); ``monitoring`` watches the rounds and
``summary`` closes a completed run (registration, pilot, report).
"""

from fedwarden.build.deployment import Deployment, local_federation, open_store
from fedwarden.build.integrity import BudgetChange, ResumeRefused
from fedwarden.build.run import PreparedRun, prepare, resumed, run, serve
from fedwarden.build.server import build_server

__all__ = [
    "BudgetChange",
    "Deployment",
    "PreparedRun",
    "ResumeRefused",
    "build_server",
    "local_federation",
    "open_store",
    "prepare",
    "resumed",
    "run",
    "serve",
]
