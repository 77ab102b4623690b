"""Readers that turn raw data into a :class:`core.tasks.Federation` of sites."""
