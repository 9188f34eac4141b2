"""Helpers of the applications: optional dependencies (`extras`), output paths checked before work (`paths`)."""
