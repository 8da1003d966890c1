"""CTPA pulmonary-embolism triage daemon: receive, queue, analyse, report, prioritise."""

__version__ = "0.1.0"
