"""A test plugin that cannot even be imported."""

import llmos_this_module_does_not_exist  # noqa: F401
