"""The model server's settings: one ``ServerSettings`` read from ``SELFHEAL_*`` variables.

The server never reads ``selfheal.yaml`` (that would pull ``flows`` into its
process); ``selfheal serve`` turns the config into these variables instead.
Names shared with ``selfheal.yaml`` mean the same thing there
(``SELFHEAL_MODEL_NAME``, ``SELFHEAL_TRACKING_URI``, and ``SELFHEAL_LAKE__ROOT`` /
``SELFHEAL_SERVING__POLL_SECONDS`` style overrides are accepted too).

Example:
    >>> settings = ServerSettings(model_name="fraud-detector", lake_root="/data/lake")
    >>> settings.breaker_policy.fail_max
    5
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving.breaker import BreakerPolicy

#: MLflow's switch for unpickling model artifacts (it covers skops too); "false" in every process selfheal starts.
PICKLE_SWITCH = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"

_PLACEHOLDER_TOKENS = frozenset({"changethis", "changeme", "secret", "token", "admin", "password", "test"})
_MIN_TOKEN_CHARS = 16


def _env(name: str, nested: str | None = None) -> AliasChoices:
    """Accept ``SELFHEAL_<NAME>`` and, where ``selfheal.yaml`` has the key, its nested override name."""
    names = [f"SELFHEAL_{name}"]
    if nested:
        names.append(f"SELFHEAL_{nested}")
    return AliasChoices(*names)


def forbid_pickle(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Switch MLflow's model deserialization off in ``env`` (default: this process's environment); returns it.

    selfheal loads models itself (``serving.modelio``: skops, reviewed types only); with the
    switch off, any MLflow loader reached by mistake refuses instead of unpickling.
    """
    target = os.environ if env is None else env
    target[PICKLE_SWITCH] = "false"
    return target


def default_artifact_root(tracking_uri: str | None) -> str | None:
    """``<folder>/artifacts`` beside a ``sqlite:///<folder>/<db>`` store (selfheal's layout); None otherwise."""
    if not tracking_uri or not tracking_uri.startswith("sqlite:///"):
        return None
    db = tracking_uri.removeprefix("sqlite:///")
    return str(Path(db if db.startswith("/") else os.path.abspath(db)).parent / "artifacts")


class ServerSettings(BaseSettings):
    """Everything the model server reads from its environment (prefix ``SELFHEAL_``)."""

    model_config = SettingsConfigDict(env_prefix="SELFHEAL_", extra="ignore", populate_by_name=True)

    environment: Literal["development", "production"] = "production"
    """``development`` accepts a short admin token (tests, laptops)."""

    # -- the model --------------------------------------------------------
    tracking_uri: str | None = None
    """MLflow tracking URI; None uses MLflow's own default (``MLFLOW_TRACKING_URI``)."""
    registry_uri: str | None = None
    model_name: str = "fraud-detector"
    champion_alias: str = "champion"
    fallback_alias: str = "previous"
    poll_seconds: float = Field(default=10.0, gt=0, validation_alias=_env("POLL_SECONDS", "SERVING__POLL_SECONDS"))
    """How often each worker looks up the aliases in the registry."""
    control_check_seconds: float = Field(default=0.5, gt=0)
    """How often each worker looks for an admin reload/rollback made on another worker."""
    model_threads: int = Field(default=1, ge=1)
    """OpenMP/BLAS threads per prediction call; several workers already use the cores."""
    artifact_root: str | None = None
    """The registry's artifact store: versions whose artifacts live elsewhere are refused.
    None: ``<folder>/artifacts`` beside a ``sqlite:///`` store; with another store every version
    is refused until it is set."""
    trusted_types: list[str] = Field(
        default_factory=list, validation_alias=_env("TRUSTED_TYPES", "TRAINER__TRUSTED_TYPES")
    )
    """skops types added to the reviewed list (``trainer.trusted_types`` in selfheal.yaml)."""

    # -- the breaker and batching -----------------------------------------
    predict_timeout_seconds: float = Field(
        default=1.0, gt=0, validation_alias=_env("PREDICT_TIMEOUT_SECONDS", "SERVING__PREDICT_TIMEOUT_SECONDS")
    )
    breaker_fail_max: int = Field(
        default=5, ge=1, validation_alias=_env("BREAKER_FAIL_MAX", "SERVING__BREAKER_FAIL_MAX")
    )
    breaker_reset_seconds: float = Field(
        default=10.0, gt=0, validation_alias=_env("BREAKER_RESET_SECONDS", "SERVING__BREAKER_RESET_SECONDS")
    )
    max_batch_rows: int = Field(default=256, ge=1)
    """Rows of concurrent requests predicted in one model call."""
    max_inflight_batches: int = Field(default=2, ge=1)
    """Batches predicting at once; the second starts only when the first is slower than ``batch_stall_seconds``."""
    batch_stall_seconds: float = Field(default=0.05, gt=0)
    max_request_rows: int = Field(default=1000, ge=1)
    shadow_cpu_share: float = Field(default=0.1, gt=0, le=1)
    """A shadow challenger's process is busy at most this share of the time (one per worker): between
    calls it rests, so mirrored rows gather into bigger, cheaper batches; what overflows is dropped."""
    max_body_bytes: int = Field(default=8_000_000, ge=1024)
    """Largest request body on any POST route, counted while it is read (413 beyond it)."""
    max_feedback_labels: int = Field(default=10_000, ge=1)
    """Labels per ``POST /feedback``; never more than ``log_queue_rows`` (see ``feedback_limit``)."""

    # -- the labels feedback may carry ---------------------------------------
    task: Literal["binary", "multiclass", "regression"] | None = Field(
        default=None, validation_alias=_env("TASK", "DATA__TASK")
    )
    """``data.task``; None: the loaded model's (a classifier's classes, else any finite number)."""
    label_values: list[float | str] | None = Field(
        default=None, validation_alias=_env("LABEL_VALUES", "DATA__EXPECTATIONS__LABEL_VALUES")
    )
    """``data.expectations.label_values``: the labels ``/feedback`` accepts. Names (strings) are
    accepted as their index among the model's classes, as the inference log stores them."""

    # -- the inference log --------------------------------------------------
    inference_log: bool = True
    lake_root: str = Field(default=".selfheal/lake", validation_alias=_env("LAKE_ROOT", "LAKE__ROOT"))
    lake_storage_options: dict[str, str] = Field(
        default_factory=dict, validation_alias=_env("LAKE_STORAGE_OPTIONS", "LAKE__STORAGE_OPTIONS")
    )
    dead_letter_dir: str = ".selfheal/dead-letter"
    """Local folder for log batches the lake refused; replayed when it accepts writes again."""
    log_batch_rows: int = Field(default=5000, ge=1)
    """Rows that trigger a write before the flush interval is up."""
    log_flush_seconds: float = Field(default=5.0, gt=0)
    """Every append is a Delta commit: seconds, not milliseconds, keep the table's log small."""
    log_queue_rows: int = Field(default=200_000, ge=1)
    """Bound of the in-memory log queue; beyond it rows are dropped and counted, requests never wait."""
    log_replay_seconds: float = Field(default=30.0, gt=0)

    # -- admin and process ----------------------------------------------------
    admin_token: SecretStr | None = None
    """Bearer token for ``/admin/*``; unset disables those endpoints."""
    runtime_dir: str | None = None
    """Folder shared by the workers of one server (admin control file, Prometheus files)."""
    model_cache_dir: str | None = None
    """Folder of verified copies of loaded versions (serving.model_cache); None: no cache."""
    registry_read_seconds: float = Field(default=5.0, gt=0)
    """A registry read not answered within this long is abandoned (a locked store; the cache serves a start)."""

    @field_validator("admin_token", mode="before")
    @classmethod
    def _empty_token_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> ServerSettings:
        token = self.admin_token.get_secret_value() if self.admin_token else None
        if token is not None and self.environment != "development":
            if token.lower() in _PLACEHOLDER_TOKENS or len(token) < _MIN_TOKEN_CHARS:
                raise ValueError(
                    f"SELFHEAL_ADMIN_TOKEN is a placeholder or shorter than {_MIN_TOKEN_CHARS} characters; "
                    "use a random one (python -c 'import secrets; print(secrets.token_urlsafe(32))') "
                    "or set SELFHEAL_ENVIRONMENT=development"
                )
        if "://" not in self.lake_root:
            self.lake_root = os.path.abspath(self.lake_root)
        self.dead_letter_dir = os.path.abspath(self.dead_letter_dir)
        if self.runtime_dir is not None:
            self.runtime_dir = os.path.abspath(self.runtime_dir)
        return self

    @property
    def resolved_artifact_root(self) -> str:
        """The artifact root versions must live under ("" refuses every version: none is configured)."""
        return self.artifact_root or default_artifact_root(self.tracking_uri) or ""

    @property
    def feedback_limit(self) -> int:
        """Labels one ``/feedback`` request may carry: more than the log queue holds could never be queued."""
        return min(self.max_feedback_labels, self.log_queue_rows)

    @property
    def breaker_policy(self) -> BreakerPolicy:
        return BreakerPolicy(
            fail_max=self.breaker_fail_max,
            reset_seconds=self.breaker_reset_seconds,
            timeout_seconds=self.predict_timeout_seconds,
        )
