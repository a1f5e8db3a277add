"""Thin adapters that plug the Advisor into training frameworks (imported lazily)."""
