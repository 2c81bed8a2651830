"""Deciding how to spend a request's tokens: prompt reading, features, classifier, policies.

Pure Python (plus scikit-learn and numpy later): no web framework, no HTTP client, no
Prometheus. ``service`` imports this package, never the reverse.
"""
