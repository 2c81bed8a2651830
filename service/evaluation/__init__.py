"""The evaluation harness behind ``ttc-router eval``: ``runner`` sends tasks and records
replies (resumable), ``analysis`` turns records into figures with intervals, ``report``
writes ``summary.json``, the PNG plots and ``report.md``."""
