"""Analysing a queued series, in the order a job goes through it.

- :mod:`.lease`: the claimed job's lease, kept alive by a heartbeat thread;
- :mod:`.decide`: run the predictor and decide with the thresholds;
- :mod:`.reports`: build the SR and KOS from that decision;
- :mod:`.store`: store the result, its reports and deliveries, and finish the job.

:class:`triage.analyse.worker.Worker` runs them one after the other for each job it claims.
"""
