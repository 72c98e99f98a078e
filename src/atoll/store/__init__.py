"""The object store: content-addressed files, trees, commits and refs; import of
OCI layers; checkout by hardlinks; fsck and garbage collection.

The on-disk format is drawn in :mod:`atoll.store.format`.
"""

from atoll.store.checkout import CheckoutStats
from atoll.store.format import STORE_VERSION, Commit, DirMeta, EntryKind
from atoll.store.fsck import FsckProblem, FsckReport
from atoll.store.gc import GcReport
from atoll.store.importer import ImportResult, ImportStats
from atoll.store.store import CommitListing, Entry, KernelInfo, Store

__all__ = [
    "STORE_VERSION",
    "CheckoutStats",
    "Commit",
    "CommitListing",
    "DirMeta",
    "Entry",
    "EntryKind",
    "FsckProblem",
    "FsckReport",
    "GcReport",
    "ImportResult",
    "ImportStats",
    "KernelInfo",
    "Store",
]
