"""UIDs of the report objects, derived from the result so that a rebuild reuses them."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydicom.uid import PYDICOM_ROOT_UID, generate_uid

from triage.report.result import AnalysisResult


def derive_uid(prefix: str, *parts: str) -> str:
    """Return a UID that depends only on `prefix` and `parts`.

    Parameters
    ----------
    prefix : str
        The organisation's UID root, ending in a dot.
    *parts : str
        What the UID stands for; the same parts always give the same UID.

    Returns
    -------
    str
        A UID of at most 64 characters.
    """
    # generate_uid concatenates its entropy sources, so ("ab", "c") and ("a", "bc")
    # would collide; a JSON array keeps the boundaries.
    return str(generate_uid(prefix=prefix, entropy_srcs=[json.dumps(list(parts))]))


@dataclass(frozen=True)
class ReportUIDs:
    """The series and SOP Instance UIDs of the SR and KOS built for one result.

    :func:`~triage.report.build_sr` and :func:`~triage.report.build_kos` take them
    from here; a caller can compute them to know a report's UIDs in advance.
    """

    sr_series_instance_uid: str
    sr_sop_instance_uid: str
    kos_series_instance_uid: str
    kos_sop_instance_uid: str

    @classmethod
    def for_result(
        cls,
        result: AnalysisResult,
        source_series_instance_uid: str,
        uid_prefix: str = PYDICOM_ROOT_UID,
    ) -> ReportUIDs:
        """Derive the UIDs from the result and the analysed series.

        Parameters
        ----------
        result : AnalysisResult
            The result; its ``result_id`` seeds the UIDs.
        source_series_instance_uid : str
            The Series Instance UID of the analysed CT series.
        uid_prefix : str, optional
            The UID root to put the UIDs under; pydicom's root by default.

        Returns
        -------
        ReportUIDs
            The same UIDs every time for the same arguments.
        """
        seed = (result.result_id, source_series_instance_uid)
        return cls(
            sr_series_instance_uid=derive_uid(uid_prefix, *seed, "sr", "series"),
            sr_sop_instance_uid=derive_uid(uid_prefix, *seed, "sr", "instance"),
            kos_series_instance_uid=derive_uid(uid_prefix, *seed, "kos", "series"),
            kos_sop_instance_uid=derive_uid(uid_prefix, *seed, "kos", "instance"),
        )
