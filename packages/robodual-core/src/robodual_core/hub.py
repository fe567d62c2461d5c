"""Hugging Face model ids (``org/name``, ``org/name@revision``) resolved from the local Hugging Face cache.

Wherever a command takes a model folder (``--base``, ``model.base``, a DINO sensor's ``pretrained``, ``--policy``)
it also takes a Hub id, found in the cache exactly as ``huggingface_hub`` lays it out and reads it
(``models--org--name/snapshots/<commit>/``, ``refs/<branch>``): through ``snapshot_download(local_files_only=True)``
and ``try_to_load_from_cache``. Nothing is ever downloaded (``HF_HUB_OFFLINE`` or not): a model that is not cached
is a one-line error naming the cache searched and the command that fills it. ``HF_HUB_CACHE`` / ``HF_HOME`` pick the
cache as they do for ``huggingface_hub``, read when the id is resolved.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from robodual_core.errors import RobodualError

# org/name with an optional @revision; a Hub repo name is letters, digits, '-', '_', '.'
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class HubModel:
    """A cached Hub model: its id, the revision asked for, the commit the cache holds for it, the local folder."""

    repo_id: str
    revision: str | None
    commit: str
    path: Path

    def source(self) -> dict[str, str]:
        """What a run's config.json records about where its base came from."""
        return {"repo_id": self.repo_id, "revision": self.revision or "main", "commit": self.commit,
                "path": str(self.path)}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as ``huggingface_hub`` picks it (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``), read from the environment now (its constants are read at import)."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def parse_hub_id(ref: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``ref`` is written as a Hub id (``org/name`` or ``org/name@rev``), else None.
    ``revision`` (a ``--revision`` flag) and an ``@rev`` in ``ref`` must not disagree."""
    match = _HUB_ID.match(ref.strip())
    if match is None:
        return None
    rev = match.group("rev")
    if rev and revision and rev != revision:
        raise RobodualError(f"'{ref}' names revision '{rev}' and --revision names '{revision}'; give one")
    return match.group("repo"), rev or revision


def is_hub_ref(ref: str | Path) -> bool:
    """``ref`` is written as a Hub id and is not an existing local path (a local folder always wins)."""
    text = str(ref)
    return not Path(text).expanduser().exists() and parse_hub_id(text) is not None


def resolve_hub_model(ref: str, revision: str | None = None, what: str = "--base",
                      folder_form: str = "a local model folder") -> HubModel:
    """The cached snapshot of Hub id ``ref`` (``org/name[@rev]``; ``revision`` from a ``--revision`` flag).

    Not cached (or not that revision): one line naming ``what``, the cache folder searched, the revisions it holds
    and the two ways out (``hf download`` or ``folder_form``)."""
    parsed = parse_hub_id(ref, revision)
    if parsed is None:
        raise RobodualError(f"{what} '{ref}' is not a Hugging Face model id (expected org/name or org/name@revision) "
                            f"nor an existing path; expected {folder_form}")
    repo_id, rev = parsed
    cache = hub_cache_dir()
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        found = snapshot_download(repo_id, revision=rev, cache_dir=str(cache), local_files_only=True)
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        found = None
    if not isinstance(found, str) or not Path(found).is_dir():
        repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
        held = _cached_revisions(cache, repo_id)
        holds = (f"it holds {', '.join(held)}" if held else
                 "it holds no snapshot of it" if repo_dir.exists() else "it has no such model")
        rev_note = f" at revision '{rev}'" if rev else ""
        fetch = f"hf download {repo_id}" + (f" --revision {rev}" if rev else "")
        raise RobodualError(
            f"{what} '{ref}': Hugging Face model {repo_id}{rev_note} is not in the local cache '{repo_dir}' "
            f"({holds}; the cache is HF_HUB_CACHE or $HF_HOME/hub, nothing is downloaded); fetch it with "
            f"`{fetch}` or pass {folder_form}")
    path = Path(found)
    return HubModel(repo_id, rev, path.name, path)


def resolve_model_path(ref: str | Path, revision: str | None = None, what: str = "--base",
                       folder_form: str = "a local model folder") -> Path:
    """A local path for ``ref``: itself when it exists or is not written as a Hub id (the caller's own checks
    then apply), else the cached snapshot folder of the Hub id (:func:`resolve_hub_model`)."""
    text = str(ref)
    if not is_hub_ref(text):
        if revision:
            raise RobodualError(f"--revision '{revision}' applies to a Hugging Face model id (org/name), but {what} "
                                f"is the local path '{text}'")
        return Path(text).expanduser() if text else Path(text)
    return resolve_hub_model(text, revision, what, folder_form).path


def cached_file(ref: str, filename: str, revision: str | None = None, what: str = "pretrained",
                folder_form: str = "a local file") -> Path:
    """``filename`` of cached Hub model ``ref`` (``try_to_load_from_cache``), or one line saying where it was looked
    for."""
    snapshot = resolve_hub_model(ref, revision, what, folder_form)
    from huggingface_hub import try_to_load_from_cache

    parsed = parse_hub_id(ref, revision)
    assert parsed is not None
    found = try_to_load_from_cache(parsed[0], filename, cache_dir=str(hub_cache_dir()), revision=snapshot.commit)
    if not isinstance(found, str):
        raise RobodualError(f"{what} '{ref}': the cached snapshot '{snapshot.path}' has no {filename}; expected "
                            f"{folder_form}")
    return Path(found)


def _cached_revisions(cache: Path, repo_id: str) -> list[str]:
    """The branches and commits the cache holds for ``repo_id`` (``scan_cache_dir``), for error messages."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache)
    except Exception:  # no cache folder, or one huggingface_hub cannot read: the message says so without them
        return []
    names: list[str] = []
    for repo in info.repos:
        if repo.repo_id == repo_id and repo.repo_type == "model":
            for rev in sorted(repo.revisions, key=lambda r: r.commit_hash):
                refs = sorted(rev.refs)
                names.append(f"{rev.commit_hash[:12]}" + (f" ({', '.join(refs)})" if refs else ""))
    return names


def cached_policy(policy: str | Path, out: Path | None, flag: str = "--policy", needs_out: bool = True) -> Path | None:
    """The cached snapshot folder when ``policy`` is an ``org/name[@rev]`` id (a policy folder, run or model folder
    in the local Hugging Face cache), else None (a local path: the command's own checks apply). Results are never
    written into the cache: with ``needs_out`` an id needs ``--out``."""
    if not is_hub_ref(str(policy)):
        return None
    path = resolve_hub_model(str(policy), what=flag, folder_form="a local run, checkpoint or policy folder").path
    if needs_out and out is None:
        raise RobodualError(f"{flag} '{policy}' is a Hugging Face id (the cached snapshot '{path}'); pass --out: "
                            "results are not written into the Hugging Face cache")
    return path
