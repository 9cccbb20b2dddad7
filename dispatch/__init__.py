"""Dispatch: agent tables, line groups, handoff of runs and result sync.

Never opens a serial port; never imports drivers or daemon.
"""
