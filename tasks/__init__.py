"""The paper's experiments, one sub-package each, run as `python -m tasks.<name>`.

Shared scene-data code lives in `tasks.scenes`. A trained run is read back from its folder by
`tasks.runs.load_run`, which `python -m tasks.evaluate`, `tasks.predict` and `tasks.export` use.
`python -m tasks.reproduce` runs every table's experiments in one command and writes REPORT.md.
"""
