"""Finished work read back: the recommended trial, report, export, listing. No torch."""
