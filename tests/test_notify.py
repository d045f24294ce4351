"""Finding the FUSE session's descriptor for the kernel notifications pyfuse3 has no call for
(tartapefs.notify); what they do to a real mount is in test_refresh.py."""

from __future__ import annotations

import os

import pytest

from tartapefs.notify import expire_entries, fuse_device_fd

pytestmark = pytest.mark.mount  # /dev/fuse, where the machine can mount


def test_the_session_descriptor_is_the_one_dev_fuse_descriptor_and_none_when_ambiguous():
    assert fuse_device_fd() is None
    first = os.open("/dev/fuse", os.O_RDWR)
    try:
        assert fuse_device_fd() == first
        second = os.open("/dev/fuse", os.O_RDWR)
        try:
            assert fuse_device_fd() is None  # which one is the session's cannot be told
        finally:
            os.close(second)
        assert fuse_device_fd() == first
    finally:
        os.close(first)


def test_without_a_descriptor_or_when_refused_every_name_left_is_handed_back():
    names = [b"a.tar", b"b.tar"]
    assert expire_entries(None, 1, names) == names
    fd = os.open("/dev/fuse", os.O_RDWR)  # no session on it: the kernel refuses
    try:
        assert expire_entries(fd, 1, names) == names
    finally:
        os.close(fd)
