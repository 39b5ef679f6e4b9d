"""The built-in plugins (``dutybridge_plugins``), each registered by name in
``dutybridge.plugins.BUILTIN_PLUGINS``.
"""
