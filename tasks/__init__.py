"""The paper's experiments, one sub-package each, run as `python -m tasks.<name>`.

Shared scene-data code lives in `tasks.scenes`.
"""
