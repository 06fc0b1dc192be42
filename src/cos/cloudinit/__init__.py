"""Cloud-init: a yip-compatible stage engine (loader, schema, runner, plugins)."""
