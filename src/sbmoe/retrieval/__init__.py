"""Encoding texts, exact search, and TREC run files."""
