"""The built-in services, one module each; each registers through the same hook as any plugin."""
