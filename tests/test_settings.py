"""Every setting is documented in .env.example with its default, and nothing else is there."""

import re

from poller.resources import PROJECT_ROOT
from poller.settings import Settings


def test_env_example_lists_every_setting_with_its_default():
    text = (PROJECT_ROOT / ".env.example").read_text()
    documented = dict(re.findall(r"^WA_([A-Z_]+)=(.*)$", text, flags=re.M))
    fields = Settings.model_fields
    assert {k.lower() for k in documented} == set(fields)
    defaults = Settings(_env_file=None)
    for key, value in documented.items():
        default = getattr(defaults, key.lower())
        if default is None:
            assert value == "", key
        elif isinstance(default, bool):
            assert value == str(default).lower(), key
        else:
            assert type(default)(value) == default, key
