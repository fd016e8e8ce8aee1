"""jsar: cross-modal sound <-> image retrieval and sound source localization with Joint Slot Attention."""

__version__ = "0.1.0"
