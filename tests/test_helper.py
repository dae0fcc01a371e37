"""Helper processes (kernel.helper) are found by a short name that apps register."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.conf import settings

from kernel import helper


def _subclasses(cls) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_every_helper_class_names_a_registered_target():
    """Each Helper subclass's TARGET is registered (apps are ready: their modules loaded)."""
    classes = _subclasses(helper.Helper)
    assert {c.__name__ for c in classes} >= {"Shard", "Writer"}
    for cls in classes:
        assert callable(helper.resolve(cls.TARGET)), cls


def test_an_unknown_target_is_refused_before_any_process_starts():
    with pytest.raises(helper.HelperError, match="no helper registered as 'nope'"):
        helper.Helper.start("nope")


def test_every_registered_target_resolves_in_a_child_process(nats_server):
    """The child finds each name after django.setup() and builds its handler: it exits 0
    when its input closes (a name it cannot resolve ends it with an error)."""
    assert helper.HANDLERS
    for name in sorted(helper.HANDLERS):
        child = helper.Helper.start(name)
        assert child is not None, name
        child.stop()
        assert child.proc.returncode == 0, name


def test_a_child_given_an_unregistered_name_fails():
    """The name is checked again in the child (a caller skipping start's check)."""
    proc = subprocess.Popen([sys.executable, "-c", helper.Helper.CODE, "nope"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=settings.BASE_DIR)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and b"no helper registered as 'nope'" in err
