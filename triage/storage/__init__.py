"""The files on disk and their bookkeeping (the database itself is :mod:`triage.db`).

- :mod:`.spool`: the received images, ``<data_dir>/spool/<study>/<series>/<sop>.dcm``,
  written durably;
- :mod:`.outbox`: the reports, ``<data_dir>/outbox/<result id>/``;
- :mod:`.reconcile`: brings the spool and the database back into agreement at start-up;
- :mod:`.retention`: deletes old images and reports.
"""
