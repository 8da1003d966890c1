"""Who made a report object: the device observer and the contributing equipment."""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import PYDICOM_ROOT_UID

from triage import DEFAULT_MANUFACTURER, __version__
from triage.report.result import AnalysisResult
from triage.report.uids import derive_uid

MODEL_NAME = "ctpa-triage"
"""The Manufacturer's Model Name of this software, in the header and the observer context."""


@dataclass(frozen=True)
class Device:
    """The software that writes the reports, as the DICOM header and SR content name it.

    Parameters
    ----------
    manufacturer : str
        Who makes or operates this software (Manufacturer, LO).
    serial_number : str or None
        Device Serial Number, for example the host or installation name; omitted when
        ``None``.
    uid : str
        The Device Observer UID. The same installation should always report the same
        one, so it is derived from the manufacturer and serial number unless given.
    institution_name : str or None
        Institution Name of the site that runs the software; omitted when ``None``.
    """

    manufacturer: str
    serial_number: str | None
    uid: str
    institution_name: str | None

    @classmethod
    def create(
        cls,
        manufacturer: str,
        serial_number: str | None,
        institution_name: str | None,
        uid_prefix: str,
        uid: str | None = None,
    ) -> Device:
        """Describe the device, deriving its observer UID when none is given."""
        if uid is None:
            uid = derive_uid(uid_prefix, "device", manufacturer, serial_number or "")
        return cls(manufacturer, serial_number, uid, institution_name)

    @classmethod
    def default(cls, uid_prefix: str = PYDICOM_ROOT_UID) -> Device:
        """This project as the device, with no serial number or institution."""
        return cls.create(DEFAULT_MANUFACTURER, None, None, uid_prefix)

    def observer_context(self, result: AnalysisResult) -> hd.sr.ObserverContext:
        """The device observer (TID 1002/1004): the algorithm, run by this software."""
        return hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=self.uid,
                name=result.algorithm_name,
                manufacturer_name=self.manufacturer,
                model_name=MODEL_NAME,
                serial_number=self.serial_number,
            ),
        )

    def contributing_equipment(self, result: AnalysisResult) -> hd.ContributingEquipment:
        """The model as Processing Equipment, so a PACS shows which weights made the call.

        Software Versions are the bundle version, the bundle hash (a version string
        alone does not prove which weights ran) and this software's version.
        """
        return hd.ContributingEquipment(
            manufacturer=self.manufacturer,
            purpose_of_reference=codes.DCM.ProcessingEquipment,
            manufacturer_model_name=result.algorithm_name,
            software_versions=[
                result.algorithm_version,
                result.bundle_sha256,
                # Last, so the padding of an odd-length value never lands on the
                # 64-character hash, which pydicom then misreads as too long.
                f"{MODEL_NAME} {__version__}",
            ],
            device_serial_number=self.serial_number,
            institution_name=self.institution_name,
            contribution_description=(
                f"Pulmonary embolism triage by {result.algorithm_name} "
                f"{result.algorithm_version}, bundle sha256 {result.bundle_sha256}. "
                "Preliminary AI output, not for diagnostic use."
            ),
        )
