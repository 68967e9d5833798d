"""Trainers: one small module per algorithm over the shared loop in :mod:`alignkit.trainers.loop`."""
