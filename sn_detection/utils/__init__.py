"""Utilities that are not specific to SN."""
