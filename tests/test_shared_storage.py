"""A multi-node run refuses Tune storage on a node's own disk, and accepts URIs, shared filesystems and one host."""

import pytest

from widthtune.platform.shared_storage import filesystem_type, storage_problem

MOUNTS = """\
/dev/sda1 / ext4 rw 0 0
server:/export /mnt/shared nfs4 rw 0 0
s3fs /mnt/bucket fuse.s3fs rw 0 0
tmpfs /tmp tmpfs rw 0 0
"""


def test_filesystem_type_is_the_longest_mount_holding_the_path():
    assert filesystem_type("/mnt/shared/runs/x", MOUNTS) == "nfs4"
    assert filesystem_type("/mnt/sharedother", MOUNTS) == "ext4"
    assert filesystem_type("/tmp/a/b", MOUNTS) == "tmpfs"


@pytest.mark.parametrize(
    ("storage", "hosts", "refused"),
    [
        ("/home/me/runs", {"10.0.0.1", "10.0.0.2"}, True),
        ("/tmp/runs", {"10.0.0.1", "10.0.0.2"}, True),
        ("/home/me/runs", {"127.0.0.1"}, False),
        ("/mnt/shared/runs", {"10.0.0.1", "10.0.0.2"}, False),
        ("/mnt/bucket/runs", {"10.0.0.1", "10.0.0.2"}, False),
        ("s3://bucket/runs", {"10.0.0.1", "10.0.0.2"}, False),
    ],
)
def test_storage_on_a_nodes_own_disk_is_refused_for_several_hosts(storage, hosts, refused):
    problem = storage_problem(storage, hosts, MOUNTS)
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith(f"storage: {storage!r} is on this machine's own disk")
        assert "s3://bucket/prefix" in problem and "2 hosts (10.0.0.1, 10.0.0.2)" in problem
