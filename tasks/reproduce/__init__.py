"""Reproduce the paper's Tables 1-6 in one command, ``python -m tasks.reproduce``: the plan of experiments (each a
task's own command line, ``plan.py``), the progress line and ``REPORT.md`` (``report.py``)."""
from .plan import BUDGETS, STATE_NAME, TABLES, Experiment, State, experiments, planned_steps, read_state
from .report import REPORT_NAME, format_duration, machine, progress_line, time_left, write_report

__all__ = ["TABLES", "BUDGETS", "STATE_NAME", "REPORT_NAME", "Experiment", "State", "experiments", "planned_steps",
           "read_state", "format_duration", "machine", "progress_line", "time_left", "write_report"]
