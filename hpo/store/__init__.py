"""The study store: opening it from a URL, waiting out outages. No torch."""
