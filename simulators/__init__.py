"""Simulators of the QTmsg agents, the carrier network and the USB test modems."""
