"""The figures of `tools.benchmark`, one module per stage; `timing` holds what they share."""
