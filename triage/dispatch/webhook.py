"""A JSON POST for positives, for chat bots and dashboards: UIDs and the finding only.

The payload never holds a patient name, patient ID, birth date or accession number:
a webhook's receiver is often outside the clinical systems. Whoever needs the patient
looks the study up by its Study Instance UID in the PACS.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from triage import __version__
from triage.config import WebhookDestination
from triage.dispatch.context import DeliveryContext, DeliveryError

# Client errors that a retry can fix: a timeout, "too early", "too many requests".
_TRANSIENT_CLIENT_ERRORS = {408, 425, 429}


def build_payload(context: DeliveryContext) -> dict[str, Any]:
    """The JSON body: identifiers of the study and the result, and what the model said."""
    return {
        "event": "pe_triage_result",
        "study_instance_uid": context.study_instance_uid,
        "series_instance_uid": context.series_instance_uid,
        "decision": str(context.decision),
        "probability": context.stack_probability,
        "flagged_slice_count": context.flagged_slice_count,
        "sr_sop_instance_uid": context.sr_sop_instance_uid,
        "kos_sop_instance_uid": context.kos_sop_instance_uid,
        "bundle_name": context.bundle_name,
        "bundle_version": context.bundle_version,
        "created_at": context.created_at.isoformat(timespec="seconds") + "Z",
        "result_id": context.result_id,
        "delivery_id": context.delivery_id,
    }


def send_webhook(destination: WebhookDestination, context: DeliveryContext) -> None:
    """POST the payload; any 2xx answer is success.

    Raises
    ------
    DeliveryError
        Permanent for a 4xx other than 408, 425 and 429 (a wrong URL or token);
        transient for those, 5xx, timeouts and connection failures.
    """
    if not context.is_positive:
        raise DeliveryError(
            f"only PE-positive results go to webhooks; this one is {context.decision}",
            permanent=True,
        )
    body = json.dumps(build_payload(context)).encode("utf-8")
    request = urllib.request.Request(destination.url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    request.add_header("User-Agent", f"ctpa-triage/{__version__}")
    # The same key on every attempt lets a receiver drop a resend it already has.
    request.add_header("Idempotency-Key", f"ctpa-triage-delivery-{context.delivery_id}")
    if destination.token:
        # Unredirected: a redirect to another host must not take the token with it.
        request.add_unredirected_header("Authorization", f"Bearer {destination.token}")
    try:
        with urllib.request.urlopen(request, timeout=destination.timeout_seconds) as response:
            status = int(response.status)
    except urllib.error.HTTPError as err:
        code = int(err.code)
        permanent = 400 <= code < 500 and code not in _TRANSIENT_CLIENT_ERRORS
        raise DeliveryError(
            f"webhook {destination.name} answered HTTP {code} {err.reason}", permanent=permanent
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise DeliveryError(f"webhook {destination.name} failed: {reason}") from err
    if not 200 <= status < 300:
        raise DeliveryError(f"webhook {destination.name} answered HTTP {status}")
