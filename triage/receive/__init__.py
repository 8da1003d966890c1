"""Receiving: C-STORE in, durable file, instance row, then Success.

- :mod:`.scp`: the DICOM listener and its C-STORE handler;
- :mod:`.transport`: receiver processes sharing one listening socket;
- :mod:`.integrity`, :mod:`.header`, :mod:`.part10`: check a received dataset, read
  the header fields the queue needs, and frame it as a Part 10 file;
- :mod:`.recorder`: batches instance rows from the handler threads;
- :mod:`.ingest`: writes study, series and instance rows (and reopens a series).
"""
