"""What the store remembers of finished imports: which commit a manifest gave
(``state/manifests/<digest hex>``), so that importing the same image again
reads no layer, and the partial markers an import heals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atoll.errors import NotFoundError, StoreCorruptError
from atoll.fsutil import write_atomic
from atoll.oci.digest import Digest
from atoll.store.format import (
    COMMIT_SUFFIX,
    MANIFESTS_DIR,
    PARTIAL_DIR,
    STATE_DIR,
    TREE_SUFFIX,
    Commit,
    encode_commit,
)
from atoll.store.objects import Staging

if TYPE_CHECKING:
    from atoll.store.store import Store


def find_import(store: Store, manifest_digest: Digest) -> Commit | None:
    """A complete commit imported from this manifest before, if any."""
    path = store.path / STATE_DIR / MANIFESTS_DIR / manifest_digest.hex
    try:
        commit_id = path.read_text().strip()
    except OSError:
        return None
    if not store.has_commit(commit_id) or store.is_partial(commit_id):
        return None
    try:
        commit = store.commit(commit_id)
    except (StoreCorruptError, NotFoundError):
        return None
    if commit.manifest_digest != str(manifest_digest):
        return None
    if not store.has_object(commit.tree, TREE_SUFFIX):
        return None
    return commit


def recommit(store: Store, base: Commit, *, image: str, parent: str | None) -> str:
    """The commit for *base*'s tree with this image name and parent: *base*
    itself when they match, else a new commit object (no layer is read)."""
    if base.image == image and base.parent == parent:
        return base.id
    commit_id, data = encode_commit(
        parent=parent,
        timestamp=base.timestamp,
        tree=base.tree,
        root=base.root,
        image=image,
        manifest_digest=base.manifest_digest,
        config_digest=base.config_digest,
        version=base.version,
        subject=base.subject,
        diff_ids=base.diff_ids,
    )
    if not store.has_commit(commit_id):
        staging = Staging(store.path)
        try:
            staging.add_metadata(commit_id, COMMIT_SUFFIX, data)
            staging.publish()
        finally:
            staging.close()
    return commit_id


def imported(store: Store, manifest_digest: Digest, commit_id: str, tree: str) -> None:
    """Record a finished import; clear partial markers it has healed."""
    write_atomic(
        store.path / STATE_DIR / MANIFESTS_DIR / manifest_digest.hex,
        f"{commit_id}\n".encode(),
        durable=False,
    )
    for partial in store.partial_commits():
        try:
            healed = partial == commit_id or store.commit(partial).tree == tree
        except (StoreCorruptError, NotFoundError):
            continue
        if healed:
            (store.path / STATE_DIR / PARTIAL_DIR / partial).unlink(missing_ok=True)
