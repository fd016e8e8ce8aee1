"""Index ideas that were built and measured but are not on any product path: `build_indexes` and the automatic
choice never reach them. Each module says what it measured and why it was not chosen; use them from Python."""
