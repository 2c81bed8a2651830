"""Thin HTTP handlers: parse -> RoutedRequest -> execute -> JSON or SSE."""
