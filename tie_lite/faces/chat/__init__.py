"""The browser chat (`tie-lite chat` and the Spaces demo)."""
