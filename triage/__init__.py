"""CTPA pulmonary-embolism triage daemon: receive, queue, analyse, report, prioritise."""

__version__ = "0.1.0"

DEFAULT_MANUFACTURER = "ctpa-triage open-source project"
"""The Manufacturer of the reports when the configuration names none."""
