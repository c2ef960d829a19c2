"""Which model versions a worker serves, and how they change without a request noticing.

A ``ModelSet`` (primary, fallback, baseline) is immutable; a request takes the
current one once and uses it to the end, and a reload builds a new set beside
it and swaps one reference. So no request sees a half-loaded model, and a
version that fails to load never replaces the one serving.

Each worker process polls the registry aliases every ``poll_seconds``. Admin
actions reach every worker through a small control file shared by the workers
of one server (``runtime_dir/control.json``): the worker that receives
``/admin/reload`` or ``/admin/rollback`` applies it at once and bumps the file's
generation; the others see the bump within ``control_check_seconds``.

A rollback pins the version that was ``@previous`` (or a named one) until a new
champion is promoted in the registry or an admin reload clears the pin.

The same poll reads the release state (``serving.release``): while a shadow or
canary release routes traffic, the set also holds the challenger version (a
rollback pin switches the release off on this server).

Example:
    >>> watcher = ModelWatcher(registry, ControlFile(runtime_dir), WatchPolicy(poll_seconds=10))
    >>> watcher.refresh()            # initial load
    >>> watcher.start()              # poll in the background
    >>> models = watcher.models      # what a request uses
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from checkpoints.exceptions import RegistryUnavailable, SelfhealError
from serving import startup
from serving.model import Baseline, LoadedModel, ModelThreads
from serving.model_cache import ModelCache
from serving.registry import ModelLoadFailed, ModelRefused, ModelRegistry, ModelVersionRef
from serving.release import RELEASE_TAG, ReleaseState
from serving.schema import FeatureSchema

logger = logging.getLogger(__name__)


class RollbackImpossible(SelfhealError):
    """There is no version to roll back to (none loaded as fallback, or the named one does not exist)."""


@dataclass(frozen=True)
class Pin:
    """A rollback in force: serve ``version`` while ``@champion`` is still ``champion_at_rollback``."""

    version: str
    champion_at_rollback: str | None


@dataclass(frozen=True)
class ControlState:
    generation: int = 0
    pin: Pin | None = None


class ControlFile:
    """Admin state shared by the workers of one server (in memory when there is no runtime folder)."""

    def __init__(self, folder: str | os.PathLike[str] | None) -> None:
        self.path = Path(folder) / "control.json" if folder is not None else None
        self._memory = ControlState()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> ControlState:
        if self.path is None:
            return self._memory
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return ControlState()
        except (OSError, ValueError) as exc:
            logger.warning("control file %s unreadable (%s); ignoring it", self.path, exc)
            return ControlState()
        pin = data.get("pin")
        return ControlState(int(data.get("generation", 0)), Pin(**pin) if pin else None)

    def update(self, pin: Pin | None) -> ControlState:
        """Set the pin (None clears it) and bump the generation so every worker applies it."""
        if self.path is None:
            self._memory = ControlState(self._memory.generation + 1, pin)
            return self._memory
        with open(self.path.with_suffix(".lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = ControlState(self.read().generation + 1, pin)
            tmp = self.path.with_suffix(f".tmp-{os.getpid()}")
            body = {"generation": state.generation, "pin": pin.__dict__ if pin else None}
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
            return state


@dataclass(frozen=True)
class ModelSet:
    """What one worker serves right now; replaced whole, never modified."""

    primary: LoadedModel | None = None
    fallback: LoadedModel | None = None
    baseline: Baseline | None = None
    pin: Pin | None = None
    challenger: LoadedModel | None = None
    """The release's challenger, loaded only while the release routes traffic to it."""
    release: ReleaseState | None = None

    @property
    def schema(self) -> FeatureSchema | None:
        """The input contract requests are validated against (the primary's; the fallback's without one)."""
        model = self.primary or self.fallback
        return model.schema if model is not None else None

    @property
    def ready(self) -> bool:
        return self.primary is not None or self.fallback is not None

    def versions(self) -> tuple[str | None, str | None]:
        return (
            self.primary.version if self.primary else None,
            self.fallback.version if self.fallback else None,
        )

    @property
    def routing(self) -> ReleaseState | None:
        """The release whose challenger takes traffic now (None: the champion takes it all)."""
        if self.challenger is None or self.release is None or not self.release.routing:
            return None
        return self.release


def _route(release: ReleaseState | None) -> tuple[str, str, str, float, str] | None:
    """What a worker serves by in a release: not its measurements, which the analysis rewrites every few
    seconds (comparing whole states re-swapped the set, and logged it, at each measurement)."""
    if release is None:
        return None
    return (release.release_id, release.mode, release.challenger, release.share, release.status)


@dataclass(frozen=True)
class ReloadReport:
    """What a refresh did.

    Attributes:
        primary: the version serving afterwards.
        fallback: the fallback version afterwards.
        changed: whether the served set changed.
        errors: versions that failed to load, registry outages (the old set kept serving).
        pin: the rollback in force, if any.
        wanted: the version that should be primary (the champion, or the pinned one).
    """

    primary: str | None
    fallback: str | None
    changed: bool
    errors: tuple[str, ...] = ()
    pin: Pin | None = None
    wanted: str | None = None

    @property
    def failed(self) -> bool:
        """The wanted primary is not the one serving (it failed to load, or the registry is down)."""
        return bool(self.errors) and self.primary != self.wanted


@dataclass(frozen=True)
class _Targets:
    """What the registry aliases (and any rollback pin) say a worker should serve."""

    champion: ModelVersionRef | None
    fallback: ModelVersionRef | None
    pin: Pin | None
    release: ReleaseState | None


@dataclass(frozen=True)
class WatchPolicy:
    """How a worker follows the registry.

    Example:
        >>> WatchPolicy(champion_alias="champion", fallback_alias="previous", poll_seconds=10)
    """

    champion_alias: str = "champion"
    """The alias of the version to serve."""
    fallback_alias: str = "previous"
    """The alias of the version that answers when the primary fails (and that a rollback serves)."""
    poll_seconds: float = 10.0
    """How often the aliases are looked up."""
    control_check_seconds: float = 0.5
    """How often the control file is read for an admin action taken on another worker."""
    failed_retry_seconds: float = 60.0
    """A version that failed to load is tried again by the poll after this long (at once by an admin reload)."""
    threads: ModelThreads = field(default_factory=ModelThreads)
    """The threads each loaded version gets."""
    trusted_types: tuple[str, ...] = ()
    """skops types config adds to the reviewed list (``serving.modelio.TRUSTED_TYPES``)."""


class ModelWatcher:
    """Loads, swaps and follows the models of one worker (see the module docstring)."""

    def __init__(
        self,
        registry: ModelRegistry,
        control: ControlFile,
        policy: WatchPolicy,
        *,
        on_swap: Callable[[ModelSet, ModelSet], None] | None = None,
        on_reload: Callable[[str], None] | None = None,
        cache: ModelCache | None = None,
    ) -> None:
        self.registry = registry
        #: Verified copies of loaded versions; what a start serves when the registry does not answer.
        self.cache = cache
        self.control = control
        self.policy = policy
        self._on_swap = on_swap
        self._on_reload = on_reload
        self._models = ModelSet()
        self._lock = threading.Lock()
        self._failed: dict[str, float] = {}  # version -> when the poll may try it again
        self._refused: dict[str, ModelRefused] = {}  # version -> why it will not be loaded
        self._seen_generation = -1
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.last_refresh: float | None = None
        self.refused: dict[str, str] | None = None
        """The wanted champion, when it was refused: ``{"version", "reason", "detail"}`` (see ``ModelRefused``)."""

    @property
    def models(self) -> ModelSet:
        return self._models

    # -- admin -----------------------------------------------------------
    def reload(self) -> ReloadReport:
        """Clear any rollback pin, look the aliases up now (retrying failed versions), and tell the other workers."""
        self.control.update(pin=None)
        return self.refresh(force=True, strict=True)

    def rollback(self, version: str | None = None) -> ReloadReport:
        """Serve ``version`` (default: the loaded fallback) instead of the champion, on every worker.

        Raises:
            RollbackImpossible: no fallback is loaded and no version was named, or it does not exist.
            RegistryUnavailable: the registry cannot be reached.
        """
        current = self._models
        target = version or (current.fallback.version if current.fallback else None)
        if target is None:
            raise RollbackImpossible(
                f"no @{self.policy.fallback_alias} version is loaded; name one: POST /admin/rollback "
                '{"version": "<n>"}'
            )
        if self.registry.by_version(target) is None:
            raise RollbackImpossible(f"model {self.registry.model_name!r} has no version {target}")
        champion = self.registry.by_alias(self.policy.champion_alias)
        self.control.update(pin=Pin(target, champion.version if champion else None))
        return self.refresh(force=True, strict=True)

    # -- the refresh -------------------------------------------------------
    def refresh(self, *, force: bool = False, strict: bool = False) -> ReloadReport:
        """Resolve the aliases (and any pin) and swap in what changed.

        Args:
            force: retry versions that failed to load before (admin reload).
            strict: raise ``RegistryUnavailable`` instead of reporting it (admin calls).
        """
        with self._lock:
            control = self.control.read()
            self._seen_generation = control.generation
            current = self._models
            try:
                with startup.phase("registry read (aliases, versions, tags)"):
                    champion, fallback_ref, pin = self._targets(control)
                    release = self._release(pin, champion)
            except RegistryUnavailable as exc:
                self._report_error(str(exc))
                if strict:
                    raise
                if not current.ready and self.cache is not None:
                    return self._serve_cached(current, str(exc))
                kept_primary, kept_fallback = current.versions()
                return ReloadReport(kept_primary, kept_fallback, False, (str(exc),), current.pin, wanted=None)
            if self.cache is not None and pin is None:
                self.cache.remember({self.policy.champion_alias: champion, self.policy.fallback_alias: fallback_ref})
            errors: list[str] = []
            new = self._assemble(current, _Targets(champion, fallback_ref, pin, release), errors, force)
            changed = self._swap(current, new)
            self.last_refresh = time.time()
            if errors:
                self._report_error("; ".join(errors))
            elif changed or force:
                self.last_error = None
            wanted = champion.version if champion is not None else None
            self.refused = self._refusal(wanted)
            return ReloadReport(*new.versions(), changed, tuple(errors), pin, wanted)

    def _serve_cached(self, current: ModelSet, outage: str) -> ReloadReport:
        """With no model yet and no registry: serve the versions the aliases named last, from the cache."""
        assert self.cache is not None
        refs = self.cache.remembered_refs()
        champion, fallback = refs.get(self.policy.champion_alias), refs.get(self.policy.fallback_alias)
        errors = [outage]
        if champion is not None or fallback is not None:
            logger.warning(
                "the registry does not answer (%s); serving the cached @%s (version %s) until it does",
                outage,
                self.policy.champion_alias,
                champion.version if champion else None,
            )
            new = self._assemble(current, _Targets(champion, fallback, None, None), errors, True)
            changed = self._swap(current, new)
        else:
            new, changed = current, False
        wanted = champion.version if champion is not None else None
        return ReloadReport(*new.versions(), changed, tuple(errors), None, wanted)

    def _assemble(self, current: ModelSet, targets: _Targets, errors: list[str], force: bool) -> ModelSet:
        """The set to serve: the targets, loaded (or reused), with what serves now kept where a load failed."""
        loaded = {m.version: m for m in (current.primary, current.fallback, current.challenger) if m is not None}
        primary, failed = self._get(targets.champion, loaded, errors, force)
        if failed or primary is None:
            primary = current.primary  # the old one keeps serving
        fallback, failed = self._get(targets.fallback, loaded, errors, force)
        if failed:
            fallback = current.fallback
        if fallback is not None and primary is not None and fallback.version == primary.version:
            fallback = None
        baseline = current.baseline
        if primary is not None and (current.primary is None or primary.version != current.primary.version):
            baseline = self._baseline(primary) or baseline
        elif baseline is None and fallback is not None:
            baseline = self._baseline(fallback)
        release = targets.release
        challenger = None
        if release is not None:
            ref = ModelVersionRef(self.registry.model_name, release.challenger)
            challenger, failed = self._get(ref, loaded, errors, force)
            if failed:
                challenger = current.challenger if _route(current.release) == _route(release) else None
        return ModelSet(primary, fallback, baseline, targets.pin, challenger, release if challenger else None)

    def _swap(self, current: ModelSet, new: ModelSet) -> bool:
        """Serve ``new`` if it differs from ``current``; whether it did."""
        changed = (
            new.versions() != current.versions()
            or new.pin != current.pin
            or _route(new.release) != _route(current.release)
            or new.challenger is not current.challenger
        )
        if not changed:
            return False
        self._models = new
        pin = new.pin
        logger.info(
            "serving %s version %s (fallback %s%s%s)",
            self.registry.model_name,
            new.versions()[0],
            new.versions()[1],
            f", pinned by a rollback from {pin.champion_at_rollback}" if pin else "",
            f", {new.release.mode} challenger v{new.release.challenger} at {new.release.share:.0%}"
            if new.routing is not None and new.release is not None
            else "",
        )
        if self._on_swap is not None:
            self._on_swap(current, new)
        return True

    def _targets(self, control: ControlState) -> tuple[ModelVersionRef | None, ModelVersionRef | None, Pin | None]:
        champion = self.registry.by_alias(self.policy.champion_alias)
        pin = control.pin
        if pin is not None and champion is not None and champion.version != pin.champion_at_rollback:
            logger.info(
                "a new champion (version %s) replaces the rollback to version %s", champion.version, pin.version
            )
            if self.control.read().pin == pin:
                self.control.update(pin=None)  # so the pin cannot come back if the alias returns
            pin = None
        if pin is not None:
            return self.registry.by_version(pin.version), None, pin
        previous = self.registry.by_alias(self.policy.fallback_alias)
        return champion, previous, None

    def _release(self, pin: Pin | None, champion: ModelVersionRef | None) -> ReleaseState | None:
        """The release that routes traffic now, if any (never under a rollback pin, nor of the champion itself)."""
        if pin is not None:
            return None
        state = ReleaseState.from_tag(self.registry.model_tags().get(RELEASE_TAG))
        if state is None or not state.routing:
            return None
        if champion is not None and state.challenger == champion.version:
            return None
        return state

    def _get(
        self, ref: ModelVersionRef | None, loaded: dict[str, LoadedModel], errors: list[str], force: bool
    ) -> tuple[LoadedModel | None, bool]:
        """The loaded model for ``ref`` (loading it if needed), and whether loading failed."""
        if ref is None:
            return None, False
        if ref.version in loaded:
            return loaded[ref.version], False
        if not force and time.monotonic() < self._failed.get(ref.version, 0.0):
            return None, True
        try:
            model = LoadedModel.load(self.registry, ref, self.policy.threads, self.policy.trusted_types, self.cache)
        except (ModelLoadFailed, RegistryUnavailable) as exc:
            if isinstance(exc, ModelRefused):
                self._refused[ref.version] = exc
            self._failed[ref.version] = time.monotonic() + self.policy.failed_retry_seconds
            errors.append(str(exc))
            logger.error("%s; still serving version %s", exc, self._models.versions()[0])
            if self._on_reload is not None:
                self._on_reload("failure")
            return None, True
        self._failed.pop(ref.version, None)
        self._refused.pop(ref.version, None)
        loaded[ref.version] = model
        if self._on_reload is not None:
            self._on_reload("success")
        return model, False

    def _refusal(self, version: str | None) -> dict[str, str] | None:
        refused = self._refused.get(version) if version is not None else None
        if refused is None:
            return None
        return {"version": refused.version, "reason": refused.reason, "detail": str(refused)}

    def _baseline(self, model: LoadedModel) -> Baseline | None:
        try:
            return Baseline.from_model(model)
        except Exception as exc:  # it runs the model's own code; a baseline is a nicety, never block a reload
            logger.warning("version %s: no baseline could be derived: %s: %s", model.version, type(exc).__name__, exc)
            return None

    def _report_error(self, message: str) -> None:
        self.last_error = message

    # -- the background thread ----------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_poll = time.monotonic() + self.policy.poll_seconds
        while not self._stop.wait(self.policy.control_check_seconds):
            try:
                generation = self.control.read().generation
                if generation != self._seen_generation:
                    self.refresh(force=True)
                elif time.monotonic() >= next_poll:
                    self.refresh()
            except Exception:  # the watcher thread must survive a bug, or the worker never reloads again
                logger.exception("model refresh failed; the current models keep serving")
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + self.policy.poll_seconds
