"""The node daemon: composes drivers and dispatch into supervised components."""
