"""The backends. Each module is imported only when its URL scheme or class is used."""
