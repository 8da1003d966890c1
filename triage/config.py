"""The daemon's configuration: one YAML file, validated into typed models at start-up.

Unknown keys are errors, and every error names its key path, so that an admin who
mistypes ``stable_secs`` learns about it before the daemon runs with a default.
"""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from triage import DEFAULT_MANUFACTURER
from triage.errors import ConfigError

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # DICOM AE: no backslash, 1-16 chars
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
# A web.users name: it goes into the session cookie and the feedback table's ``who``.
_USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
MAX_USER_NAME_CHARS = 32
#: The user name of the shared ``web.token``, as feedback records it.
SHARED_TOKEN_USER = "web.token"
MIN_USER_TOKEN_CHARS = 16


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host(value: str) -> str:
    """A host name (RFC 1123 labels; underscores allowed, as internal DNS has them) or an
    IP address; anything else could never be connected to."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    name = value.removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a host name or an IP address")
    return value


def _check_ae_title(value: str) -> str:
    if not _AE_TITLE.fullmatch(value) or not value.strip():
        raise ValueError(
            "an AE title is 1 to 16 printable characters, not only spaces, and has no backslash"
        )
    return value


class TLSConfig(_Section):
    """DICOM TLS for the receiver (optional)."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: str | None = None
    ca_certificate: Path | None = None
    require_client_certificate: bool = False

    @model_validator(mode="after")
    def _files_when_enabled(self) -> TLSConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("TLS is enabled, so 'certificate' and 'private_key' are required")
        if self.require_client_certificate and self.ca_certificate is None:
            raise ValueError(
                "'require_client_certificate' needs 'ca_certificate' to verify clients against"
            )
        return self


class ReceiverConfig(_Section):
    """The DICOM Storage SCP that the PACS forwards studies to."""

    ae_title: str = "TRIAGE"
    host: str = "127.0.0.1"
    port: int = Field(default=11112, ge=0, le=65535)
    allowed_calling_aets: list[str] = Field(default_factory=list)
    max_associations: int = Field(default=16, ge=1)
    max_pending_connections: int = Field(default=64, ge=1)
    max_pending_per_address: int = Field(default=8, ge=1)
    max_pdu: int = Field(default=0, ge=0)
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)
    min_free_disk_mb: int = Field(default=1024, ge=0)
    shutdown_timeout: float = Field(default=30.0, ge=0)
    processes: int = Field(default=1, ge=1)
    tls: TLSConfig = Field(default_factory=TLSConfig)

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("allowed_calling_aets")
    @classmethod
    def _aets(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("max_pdu")
    @classmethod
    def _pdu(cls, value: int) -> int:
        if value != 0 and value < 4096:
            raise ValueError("max_pdu is 0 (unlimited) or at least 4096 bytes")
        return value


class SelectionConfig(_Section):
    """Rules that decide whether a complete series is a CTPA worth analysing."""

    modalities: list[str] = Field(default_factory=lambda: ["CT"])
    require_original: bool = True
    require_axial: bool = True
    min_slice_thickness_mm: float = Field(default=1.5, ge=0)
    max_slice_thickness_mm: float = Field(default=5.0, gt=0)
    min_slices: int = Field(default=40, ge=1)
    series_description_include: str | None = None
    series_description_exclude: str | None = None

    @field_validator("series_description_include", "series_description_exclude")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as err:
                raise ValueError(f"not a valid regular expression: {err}") from err
        return value

    @model_validator(mode="after")
    def _range(self) -> SelectionConfig:
        if self.min_slice_thickness_mm > self.max_slice_thickness_mm:
            raise ValueError("min_slice_thickness_mm is larger than max_slice_thickness_mm")
        return self


class SeriesConfig(_Section):
    """When a series counts as complete, and which series are analysed."""

    stable_seconds: float = Field(default=30.0, gt=0)
    sweep_interval_seconds: float = Field(default=5.0, gt=0)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)


class DatabaseConfig(_Section):
    """Where the durable queue lives. Empty url means SQLite under data_dir."""

    url: str | None = None
    busy_timeout_ms: int = Field(default=30000, ge=0)


class LoggingConfig(_Section):
    """structlog output."""

    format: Literal["json", "console"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


DEMO_BUNDLE = Path(__file__).resolve().parent.parent / "model" / "bundles" / "demo"
"""The demo bundle shipped in the model package: trained on synthetic phantoms only."""


class ModelConfig(_Section):
    """The weight bundle the workers load, and how they run it."""

    # Null: the shipped demo bundle (synthetic training data, not for clinical use).
    bundle: Path | None = None
    # float32, bfloat16 or float16; null uses the bundle's own setting.
    precision: Literal["float32", "bfloat16", "float16"] | None = None
    # Threads per CPU operation, and the threads and decoding processes that preprocess a
    # series; null lets the backend decide, and preprocessing uses every core.
    threads: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=16, ge=1)
    # The Keras backend the workers run the model on (jax and torch need the extras).
    backend: Literal["tensorflow", "jax", "torch"] = "tensorflow"
    # auto (worker i on GPU i mod the GPU count, else the CPU), cpu, or cuda:N.
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.match(r"^(auto|cpu|cuda:\d+)$", value):
            raise ValueError("must be auto, cpu or cuda:N (N a GPU index)")
        return value

    @property
    def bundle_dir(self) -> Path:
        """The bundle folder to load."""
        return self.bundle or DEMO_BUNDLE


class WorkerConfig(_Section):
    """Inference workers: how many, and how they hold their jobs."""

    processes: int = Field(default=1, ge=0)
    # A running job's lease; a worker renews it every heartbeat_seconds. A job whose lease
    # ran out (its worker died) goes back to the queue.
    lease_seconds: float = Field(default=300.0, gt=0)
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    # Attempts before a job that keeps failing is marked failed.
    max_attempts: int = Field(default=3, ge=1)
    # How often an idle worker looks for a queued job.
    poll_seconds: float = Field(default=1.0, gt=0)
    # Flagged slices (most probable first) that get a heat map (model.explain) and key images in
    # the result's outbox for the study view, after the result is stored; 0: none.
    heatmap_slices: int = Field(default=8, ge=0)
    # An idle worker (checking every poll_seconds) reads and preprocesses a series once it
    # has been quiet for half of series.stable_seconds and passes the selection rules,
    # while it waits out the rest: its job then starts at the CNN. A late instance costs
    # the work again, never a stale input (triage.analyse.early).
    preprocess_early: bool = True

    @model_validator(mode="after")
    def _heartbeat_inside_lease(self) -> WorkerConfig:
        if self.heartbeat_seconds >= self.lease_seconds:
            raise ValueError("heartbeat_seconds must be shorter than lease_seconds")
        return self


class ThresholdsConfig(_Section):
    """Decision thresholds; null uses the bundle's (Youden on validation data)."""

    stack: float | None = Field(default=None, ge=0, le=1)
    slice: float | None = Field(default=None, ge=0, le=1)
    # Flagged slices (at or above the slice threshold) per study, most probable first.
    max_flagged_slices: int = Field(default=10, ge=1)


class WebTLSConfig(_Section):
    """HTTPS for the worklist, so the token does not cross the network in clear text."""

    enabled: bool = False
    certificate: Path | None = None
    private_key: Path | None = None
    private_key_password: str | None = None

    @model_validator(mode="after")
    def _files_when_enabled(self) -> WebTLSConfig:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("TLS is enabled, so 'certificate' and 'private_key' are required")
        return self


class WebConfig(_Section):
    """The radiologists' worklist, JSON API, health and metrics."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Bearer token shared by everyone (its user name is "web.token"); web.token or
    # web.users is required when host is not a loopback address.
    token: str | None = None
    # Named users, name -> their own token, so that a verdict records who gave it.
    users: dict[str, str] = Field(default_factory=dict)
    # How long a browser's session (opened with /?token=...) lasts before it needs the
    # token again.
    session_hours: float = Field(default=12.0, gt=0)
    tls: WebTLSConfig = Field(default_factory=WebTLSConfig)
    refresh_seconds: int = Field(default=15, ge=1)
    # The worklist shows studies that received an instance in the last this many hours
    # (a month of studies would make every refresh read them all); null shows all.
    worklist_hours: float | None = Field(default=72, gt=0)
    # Patient name and ID on the worklist and study view: always with web.token or
    # web.users set (every reader is authenticated); without a token (loopback only)
    # only when true.
    show_patient_identity: bool = False
    # A link per study to the hospital's viewer, e.g.
    # https://pacs/viewer?StudyInstanceUIDs={study_instance_uid}
    viewer_url: str | None = None

    @field_validator("viewer_url")
    @classmethod
    def _viewer_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            value.format(study_instance_uid="1.2.3")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"web.viewer_url may hold only the placeholder {{study_instance_uid}}, not {exc}"
            ) from exc
        if not value.startswith(("https://", "http://")):
            raise ValueError("web.viewer_url must be an http:// or https:// address")
        return value

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)

    @field_validator("users")
    @classmethod
    def _users(cls, users: dict[str, str]) -> dict[str, str]:
        # The messages name users, never their tokens: a config error is logged.
        for name, token in users.items():
            if len(name) > MAX_USER_NAME_CHARS:
                # Not echoed: a name this long may be a token written as the key.
                raise ValueError(
                    f"a user name is longer than {MAX_USER_NAME_CHARS} characters (each "
                    "entry is 'name: token')"
                )
            if not _USER_NAME.fullmatch(name):
                raise ValueError(
                    f"the user name {name!r} must be letters, digits and . _ @ - only (no "
                    "spaces), starting with a letter or digit"
                )
            if name == SHARED_TOKEN_USER:
                raise ValueError(
                    f"{SHARED_TOKEN_USER!r} is the name feedback records for the "
                    "shared web.token; choose another user name"
                )
            if len(token) < MIN_USER_TOKEN_CHARS:
                raise ValueError(
                    f"the token of {name} is shorter than {MIN_USER_TOKEN_CHARS} "
                    "characters (make one with: python3 -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))')"
                )
        return users

    @model_validator(mode="after")
    def _token_when_exposed(self) -> WebConfig:
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.authenticated:
            raise ValueError(
                f"web.host {self.host} is reachable from other machines, so web.token or "
                "web.users is required (use ${ENV_VAR} to keep tokens out of the file)"
            )
        # Over web.users and web.token together: a token names one user, or feedback
        # could not say who gave a verdict.
        owners: dict[str, list[str]] = {}
        for name, token in self.tokens.items():
            owners.setdefault(token, []).append(name)
        shared = [names for names in owners.values() if len(names) > 1]
        if shared:
            raise ValueError(
                "each user needs their own token, but "
                + "; ".join(" and ".join(names) for names in shared)
                + " have the same one"
            )
        return self

    @property
    def authenticated(self) -> bool:
        """Whether the web pages need a token (web.token or web.users is set)."""
        return bool(self.token) or bool(self.users)

    @property
    def tokens(self) -> dict[str, str]:
        """Every accepted token's user name -> its token: web.users and, if set,
        web.token as the user ``web.token``."""
        tokens = dict(self.users)
        if self.token:
            tokens[SHARED_TOKEN_USER] = self.token
        return tokens


class _DicomPeer(_Section):
    """A destination reached over a DICOM association: its AE title and address."""

    name: str
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    calling_ae_title: str = "TRIAGE"

    @field_validator("ae_title", "calling_ae_title")
    @classmethod
    def _ae(cls, value: str) -> str:
        return _check_ae_title(value)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)


class DicomDestination(_DicomPeer):
    """A PACS that receives the SR (always) and the KOS (positives) by C-STORE."""

    type: Literal["dicom"]
    tls: bool = False
    ca_certificate: Path | None = None
    # Positives also get the summary Secondary Capture series (the probability curve and
    # the key slices with their heat maps), for viewers that show no SR or KOS. Their
    # SR and KOS then wait for the heat maps (at most worker.lease_seconds).
    send_secondary_capture: bool = False


class HL7Destination(_Section):
    """A RIS or worklist engine that gets an ORU^R01 over MLLP for positives."""

    name: str
    type: Literal["hl7"]
    host: str
    port: int = Field(ge=1, le=65535)
    sending_application: str = "CTPA_TRIAGE"
    sending_facility: str = "RADIOLOGY"
    receiving_application: str = "RIS"
    receiving_facility: str = "RADIOLOGY"
    ack_timeout_seconds: float = Field(default=30.0, gt=0)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        return _check_host(value)


class UPSDestination(_DicomPeer):
    """A UPS-Push SCP that gets an N-CREATE workitem with priority HIGH for positives."""

    type: Literal["ups"]


class WebhookDestination(_Section):
    """An HTTP endpoint that gets a JSON POST (no patient name or ID) for positives."""

    name: str
    type: Literal["webhook"]
    url: str
    token: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("url must start with http:// or https://")
        if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError("url must not hold spaces or control characters")
        parts = urllib.parse.urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError for a port out of range
        except ValueError as err:
            raise ValueError(f"url has an invalid port: {err}") from err
        _check_host(parts.hostname or "")
        return value


Destination = Annotated[
    DicomDestination | HL7Destination | UPSDestination | WebhookDestination,
    Field(discriminator="type"),
]


class DispatchConfig(_Section):
    """Retries of deliveries: exponential backoff with jitter, then dead."""

    max_attempts: int = Field(default=10, ge=1)
    backoff_seconds: float = Field(default=10.0, gt=0)
    max_backoff_seconds: float = Field(default=3600.0, gt=0)
    sweep_interval_seconds: float = Field(default=2.0, gt=0)
    # Sends in flight at once to one destination; each destination has its own.
    max_concurrent_sends: int = Field(default=2, ge=1)


class RetentionConfig(_Section):
    """How long the daemon keeps its own copies; the PACS keeps the originals."""

    # Received images of a series whose analysis has ended (or that was skipped), this
    # many days after its last instance arrived; null keeps them.
    spool_days: float | None = Field(default=7.0, gt=0)
    # A result's SR and KOS files once every delivery of it was sent; null keeps them.
    outbox_days: float | None = Field(default=30.0, gt=0)
    sweep_interval_seconds: float = Field(default=3600.0, gt=0)


class ReportConfig(_Section):
    """What the SR and KOS say about who made them."""

    institution_name: str | None = None
    manufacturer: str = DEFAULT_MANUFACTURER
    device_serial_number: str = "0"


class Config(_Section):
    """The whole configuration file."""

    data_dir: Path = Path("./var")
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    series: SeriesConfig = Field(default_factory=SeriesConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    worker: WorkerConfig = Field(default_factory=WorkerConfig)
    thresholds: ThresholdsConfig = Field(default_factory=ThresholdsConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    destinations: list[Destination] = Field(default_factory=list)
    dispatch: DispatchConfig = Field(default_factory=DispatchConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @model_validator(mode="after")
    def _unique_destination_names(self) -> Config:
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"destination names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def spool_dir(self) -> Path:
        """Where received instances are stored."""
        return self.data_dir / "spool"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL, SQLite under data_dir unless one is configured."""
        return self.database.url or f"sqlite:///{self.data_dir / 'triage.db'}"


def _expand_env(node: Any, path: str, problems: list[tuple[str, str]]) -> Any:
    """Replace ``${VAR}`` in strings with environment values, so secrets stay out of the file."""
    if isinstance(node, dict):
        return {
            k: _expand_env(v, f"{path}.{k}" if path else str(k), problems) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand_env(v, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in os.environ:
                problems.append((path, f"environment variable {name} is not set"))
                return ""
            return os.environ[name]

        return _ENV_REF.sub(sub, node)
    return node


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative paths relative to the config file's folder, not the working directory."""

    def fix(section: dict[str, Any], key: str) -> None:
        value = section.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            section[key] = str((base / value).resolve())

    fix(data, "data_dir")
    if isinstance(data.get("model"), dict):
        fix(data["model"], "bundle")
    for dest in data.get("destinations") or []:
        if isinstance(dest, dict):
            fix(dest, "ca_certificate")
    for section in ("receiver", "web"):
        tls = data[section].get("tls") if isinstance(data.get(section), dict) else None
        if isinstance(tls, dict):
            for key in ("certificate", "private_key", "ca_certificate"):
                fix(tls, key)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def parse_config(data: Any, base_dir: Path) -> Config:
    """Validate an already-parsed YAML document into a :class:`Config`.

    Raises
    ------
    ConfigError
        With every problem found, each with its key path.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([("(top level)", "the file must hold a mapping of keys to values")])
    problems: list[tuple[str, str]] = []
    data = _expand_env(data, "", problems)
    if problems:
        raise ConfigError(problems)
    if "data_dir" not in data:
        data["data_dir"] = "./var"
    _resolve_paths(data, base_dir)
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        for e in err.errors():
            reason = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
            problems.append((_key_path(e["loc"]), reason))
        raise ConfigError(problems) from err


def load_config(path: Path | str) -> Config:
    """Read and validate the YAML configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError([("(file)", f"cannot read {path}: {err.strerror or err}")]) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError([("(file)", f"{path} is not valid YAML: {err}")]) from err
    return parse_config(data, path.resolve().parent)
