"""Whether Tune's storage is somewhere every node of a multi-node cluster sees (since Ray 2.7 nothing syncs a
node's local folder to the head: a checkpoint written to a node-local path is lost with that node)."""

from __future__ import annotations

from pathlib import Path

# filesystems mounted from elsewhere: every node that mounts them at the same path sees the same files
SHARED_FILESYSTEMS = (
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "lustre",
    "gpfs",
    "ceph",
    "glusterfs",
    "beegfs",
    "9p",
    "virtiofs",
    "efs",
)


def filesystem_type(path: str | Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding `path` (its nearest existing folder), from /proc/mounts."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return "unknown"
    target = Path(path).expanduser().absolute()
    best, kind = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == Path(point) or Path(point) in target.parents
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind


def is_shared_filesystem(kind: str) -> bool:
    """Whether a filesystem type is a network or cluster filesystem (FUSE mounts such as s3fs or gcsfuse count)."""
    return kind in SHARED_FILESYSTEMS or kind.startswith("fuse.")


def storage_problem(storage: str, hosts: set[str], mounts: str | None = None) -> str | None:
    """Why `storage` cannot hold a run on nodes at `hosts` (None when it can): a node-local folder with more than
    one host."""
    if "://" in storage or len(hosts) <= 1:
        return None
    kind = filesystem_type(storage, mounts)
    if is_shared_filesystem(kind):
        return None
    return (
        f"storage: {storage!r} is on this machine's own disk ({kind}), but the Ray cluster has nodes on "
        f"{len(hosts)} hosts ({', '.join(sorted(hosts))}): Tune's checkpoints must be where every node sees them; "
        "set storage to a URI (s3://bucket/prefix, gs://...) or to a shared folder mounted at the same path on "
        f"every node ({', '.join(SHARED_FILESYSTEMS[:4])}, ... or a FUSE mount)"
    )
