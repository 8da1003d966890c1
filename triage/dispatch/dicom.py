"""C-STORE of the SR (always) and the KOS (positives) to a PACS, with optional TLS.

A destination with ``send_secondary_capture`` also gets a positive's summary Secondary
Capture series, where the worker wrote one (``key_images/sc_NN.dcm``, listed in
``key_images.json``; see :mod:`triage.analyse.key_images`).

The association proposes only what is sent: the SR's and the KOS's SOP classes, each in
two presentation contexts, Explicit VR Little Endian (the outbox files' own syntax) and
Implicit VR Little Endian (which every SCP supports). Separate contexts let the PACS
accept both, where one context with both syntaxes gets whichever the PACS prefers:
where it accepts the file's syntax the file's bytes are sent as they are, otherwise
the dataset is converted. The files are read from the outbox, so a retry sends the
same SOP Instance UIDs and a PACS that already has them simply stores them again.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context

from triage.config import DicomDestination
from triage.dispatch._dimse import (
    associate,
    is_success_or_warning,
    read_file,
    status_code,
    store_file,
)
from triage.dispatch.context import DeliveryContext, DeliveryError
from triage.storage.outbox import KEY_IMAGES_INDEX

_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def secondary_capture_files(context: DeliveryContext) -> list[tuple[Path, str]]:
    """A positive's Secondary Capture files and their SOP Instance UIDs, if written."""
    if not context.is_positive or context.key_images_dir is None:
        return []
    index = context.key_images_dir / KEY_IMAGES_INDEX
    if not index.is_file():  # no heat maps (yet, or ever): the SR and KOS go alone
        return []
    entries = json.loads(index.read_text()).get("secondary_capture", [])
    return [(context.key_images_dir / e["file"], e["sop_instance_uid"]) for e in entries]


def objects_to_send(
    context: DeliveryContext, secondary_capture: bool = False
) -> list[tuple[str, Path, Dataset]]:
    """The SR, and the KOS for a positive, as far as they were built, checked against
    the UIDs in the result row; with ``secondary_capture``, then the summary series.

    Raises
    ------
    DeliveryError
        If a file is missing (retried) or holds another SOP Instance UID than the one
        recorded, which would break the promise that a retry resends the same object.
    """
    wanted = []
    # The worker records no SR when a header defeated its builder; the KOS still goes.
    if context.sr_sop_instance_uid or context.kos_path is None:
        wanted.append(("SR", context.sr_path, context.sr_sop_instance_uid))
    if context.kos_path is not None:
        wanted.append(("KOS", context.kos_path, context.kos_sop_instance_uid))
    if secondary_capture:
        wanted.extend(("SC", path, uid) for path, uid in secondary_capture_files(context))
    out = []
    for what, path, recorded in wanted:
        ds = read_file(path, what)
        if recorded and str(ds.SOPInstanceUID) != recorded:
            raise DeliveryError(
                f"the {what} {path} has SOP Instance UID {ds.SOPInstanceUID}, "
                f"but the result records {recorded}",
                permanent=True,
            )
        out.append((what, path, ds))
    return out


def send_dicom(destination: DicomDestination, context: DeliveryContext) -> None:
    """Store the result's SR (and KOS) on ``destination``.

    Parameters
    ----------
    destination : DicomDestination
        The PACS.
    context : DeliveryContext
        The delivery.

    Raises
    ------
    DeliveryError
        Unless every object was answered with success or a warning.
    """
    objects = objects_to_send(context, destination.send_secondary_capture)
    sop_classes = sorted({str(ds.SOPClassUID) for _, _, ds in objects})
    assoc = associate(
        calling_ae_title=destination.calling_ae_title,
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        contexts=[build_context(uid, [ts]) for uid in sop_classes for ts in _TRANSFER_SYNTAXES],
        tls=destination.tls,
        ca_certificate=destination.ca_certificate,
    )
    peer = f"{destination.ae_title}@{destination.host}:{destination.port}"
    try:
        accepted: dict[str, set[str]] = {}
        for cx in assoc.accepted_contexts:
            accepted.setdefault(str(cx.abstract_syntax), set()).update(cx.transfer_syntax)
        for what, path, ds in objects:
            syntaxes = accepted.get(str(ds.SOPClassUID))
            if not syntaxes:
                raise DeliveryError(
                    f"{peer} does not accept {what} storage ({ds.SOPClassUID}); "
                    "configure the PACS to accept it and run `triage retry`",
                    permanent=True,
                )
            if ds.file_meta.TransferSyntaxUID in syntaxes:
                response = store_file(assoc, path)
            else:  # pynetdicom converts the dataset to a syntax the PACS accepted
                response = assoc.send_c_store(ds)
            code = status_code(response)
            if code is None:
                raise DeliveryError(f"no C-STORE response from {peer} for the {what}")
            if not is_success_or_warning(code):
                raise DeliveryError(f"{peer} refused the {what} with status 0x{code:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
