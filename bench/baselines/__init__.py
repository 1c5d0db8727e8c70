"""Reference servers that duplexd is measured against, and their client adapters."""
