"""mailbot: runs the complaints and feedback mailbox of a small organisation."""

__version__ = "0.1.0"
