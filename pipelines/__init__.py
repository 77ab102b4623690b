"""End-to-end runs, onboarding and the ``fml`` command line."""
