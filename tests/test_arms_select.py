"""Issue 20: ``arms=[cl,nscl]`` on the command line selects arms of the config, in that order."""
from __future__ import annotations

import pytest

from repalign.config import ConfigError, load_config, resolve_arms


def test_arms_list_override_selects_config_arms():
    full = load_config("demo")
    cfg = load_config("demo", ["arms=[nscl,cl]"])
    assert list(cfg["arms"]) == ["nscl", "cl"]
    assert cfg["arms"]["cl"] == full["arms"]["cl"] and [a.name for a in resolve_arms(cfg)] == ["nscl", "cl"]
    assert list(load_config(None, ["arms=[cl,ce]"])["arms"]) == ["cl", "ce"]  # from the default four
    with_ctrl = load_config("demo", ["arms=[cl,cl_eps]"])
    assert with_ctrl["arms"]["cl_eps"] == full["arms"]["cl_eps"]
    with pytest.raises(ConfigError, match=r"no arm 'foo'.*arms: cl, nscl"):
        load_config("demo", ["arms=[cl,foo]"])
    with pytest.raises(ConfigError, match="control of 'cl'"):
        load_config("demo", ["arms=[cl_eps]"])

