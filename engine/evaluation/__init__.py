"""Model comparison on real benchmarks: BEIR retrieval, STS, measured costs and use-case ranking.

Nothing here imports torch, faiss or ir_measures at import time.
"""

from engine.evaluation.beir import BeirDataset, DatasetError, load_beir
from engine.evaluation.measure import EvalProgress
from engine.evaluation.retrieval import METRICS, run_retrieval_eval
from engine.evaluation.runs import EvalRun, RunError, list_runs, load_run, save_run
from engine.evaluation.scoring import UseCase, load_use_cases, rank
from engine.evaluation.sts import load_sts, run_sts_eval

__all__ = [
    "METRICS",
    "BeirDataset",
    "DatasetError",
    "EvalProgress",
    "EvalRun",
    "RunError",
    "UseCase",
    "list_runs",
    "load_beir",
    "load_run",
    "load_sts",
    "load_use_cases",
    "rank",
    "run_retrieval_eval",
    "run_sts_eval",
    "save_run",
]
