"""components.patching.replaced: a replacement that lasts for one block, undone on any exit."""

from __future__ import annotations

import types

import pytest

from components import patching


def test_the_replacement_wraps_the_original_and_is_undone_on_leaving():
    owner = types.SimpleNamespace(f=lambda x: x + 1)
    original = owner.f
    with patching.replaced(owner, "f", lambda f: lambda x: f(x) * 10) as seen:
        assert seen is original
        assert owner.f(1) == 20
    assert owner.f is original


def test_the_original_is_restored_when_the_block_raises():
    owner = types.SimpleNamespace(f=len)
    with pytest.raises(RuntimeError, match="inside"), patching.replaced(owner, "f", lambda f: None):
        assert owner.f is None
        raise RuntimeError("inside")
    assert owner.f is len
