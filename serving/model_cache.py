"""A local, verified copy of the versions a server loaded, so a restart does not wait for the tracking store.

Each version that loaded and passed its warm-up is kept as
``<folder>/<model>/<version>/model/`` with a ``manifest.json`` (its artifact source and
the SHA-256 of every file), its compiled form (``compiled.npz``, when its preprocessing
and trees compiled and were verified: ``serving.compiled.CompiledModel``) beside it, and
the versions the aliases named last are kept in ``<folder>/<model>/aliases.json``. A later
start reads a version from here when the registry names it (no artifact copy; from its
compiled form when there is one, without scikit-learn) and, when the registry does not
answer at all, serves what the aliases named last.

Nothing is trusted because it is cached: a copy whose files do not match their digests
is ignored (and fetched again), its source is checked against the artifact root again,
and loading it goes through the same skops trusted-type check as a fresh download.

Example:
    >>> cache = ModelCache("/srv/selfheal/serving/model-cache", "fraud-detector")
    >>> path = cache.get(ref, artifact_root)          # None: not cached (or it failed its check)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import urllib.parse
from pathlib import Path
from typing import Any

from serving.registry import ModelVersionRef, outside_root

logger = logging.getLogger(__name__)

#: Versions kept per model (the champion, the fallback, a challenger, and a spare).
_KEEP = 4


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(file.relative_to(folder)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(folder.rglob("*"))
        if file.is_file()
    }


class ModelCache:
    """The cached versions of one registered model (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike[str], model_name: str) -> None:
        self.folder = Path(folder) / urllib.parse.quote(model_name, safe="")

    def _entry(self, version: str) -> Path:
        return self.folder / urllib.parse.quote(version, safe="")

    def get(self, ref: ModelVersionRef, artifact_root: str | None) -> str | None:
        """The cached model folder of ``ref`` if its files match their digests and its source is allowed; else None."""
        entry = self._entry(ref.version)
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
            model = entry / "model"
            if manifest.get("files") != _digests(model):
                logger.warning("cached version %s does not match its digests; fetching it again", ref.version)
                return None
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cached version %s is unreadable (%s); fetching it again", ref.version, exc)
            return None
        if artifact_root is not None and outside_root(str(manifest.get("source", "")), artifact_root) is not None:
            return None  # the registry download refuses it: so does the cache
        return str(model)

    def put(self, ref: ModelVersionRef, path: str, source: str) -> None:
        """Keep a copy of the model folder ``path`` (a version that loaded and warmed up); errors are only logged."""
        entry = self._entry(ref.version)
        if entry.exists():
            return
        staging = entry.with_name(f".{entry.name}.tmp-{os.getpid()}")
        try:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(path, staging / "model")
            manifest = {"version": ref.version, "source": source, "files": _digests(staging / "model")}
            (staging / "manifest.json").write_text(json.dumps(manifest))
            os.rename(staging, entry)  # another worker may have kept it first: then this copy is dropped
        except OSError as exc:
            logger.debug("version %s not cached: %s", ref.version, exc)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._prune()

    def get_compiled(self, ref: ModelVersionRef, artifact_root: str | None) -> bytes | None:
        """The compiled form kept beside ``ref``'s cached copy (``put_compiled``) if it matches its digest; else None.

        Its source is checked against the artifact root as ``get`` checks the copy's.
        """
        entry = self._entry(ref.version)
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
            digest = manifest.get("compiled")
            if digest is None:
                return None
            data = (entry / "compiled.npz").read_bytes()
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            logger.warning("cached version %s is unreadable (%s)", ref.version, exc)
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            logger.warning("the compiled form of cached version %s does not match its digest; not used", ref.version)
            return None
        if artifact_root is not None and outside_root(str(manifest.get("source", "")), artifact_root) is not None:
            return None
        return data

    def put_compiled(self, ref: ModelVersionRef, data: bytes) -> None:
        """Keep ``data`` (``CompiledModel`` bytes) beside ``ref``'s cached copy; errors are only logged.

        Nothing is kept for a version that is not cached; one kept already is replaced (it was
        not used: damaged, or made under another scikit-learn).
        """
        entry = self._entry(ref.version)
        digest = hashlib.sha256(data).hexdigest()
        try:
            manifest = json.loads((entry / "manifest.json").read_text())
            if manifest.get("compiled") == digest:
                return
            _write_atomically(entry / "compiled.npz", data)
            _write_atomically(entry / "manifest.json", json.dumps({**manifest, "compiled": digest}).encode())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.debug("compiled form of version %s not cached: %s", ref.version, exc)

    def drop(self, version: str) -> bool:
        """Forget the cached copy of ``version`` (its next load reads the registry again); whether there was one."""
        entry = self._entry(version)
        if not entry.exists():
            return False
        shutil.rmtree(entry, ignore_errors=True)
        return True

    def _prune(self) -> None:
        entries = [p for p in self.folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
        named = set(self.remembered().values())
        stale = sorted(
            (p for p in entries if urllib.parse.unquote(p.name) not in named), key=lambda p: p.stat().st_mtime
        )
        for old in stale[: max(0, len(entries) - _KEEP)]:
            shutil.rmtree(old, ignore_errors=True)

    def remember(self, aliases: dict[str, ModelVersionRef | None]) -> None:
        """Record which version each alias names (the refs a start uses when the registry does not answer)."""
        body = {alias: _ref_data(ref) for alias, ref in aliases.items() if ref is not None}
        file = self.folder / "aliases.json"
        try:
            if file.exists() and json.loads(file.read_text()) == body:
                return
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(file, json.dumps(body).encode())
        except (OSError, ValueError) as exc:
            logger.debug("aliases not cached: %s", exc)

    def remembered_refs(self) -> dict[str, ModelVersionRef]:
        """The refs the aliases named when last seen (empty when nothing was recorded)."""
        try:
            data = json.loads((self.folder / "aliases.json").read_text())
        except (OSError, ValueError):
            return {}
        return {
            alias: ModelVersionRef(
                str(value["name"]),
                str(value["version"]),
                dict(value.get("tags") or {}),
                value.get("run_id"),
                tuple(value.get("aliases") or ()),
            )
            for alias, value in data.items()
        }

    def remembered(self) -> dict[str, str]:
        return {alias: ref.version for alias, ref in self.remembered_refs().items()}


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary name of this process and a rename: a reader sees the old file or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ref_data(ref: ModelVersionRef) -> dict[str, Any]:
    return {
        "name": ref.name,
        "version": ref.version,
        "tags": dict(ref.tags),
        "run_id": ref.run_id,
        "aliases": list(ref.aliases),
    }
