"""Bridges to other tools (sentence-transformers)."""
