"""The figures of `tools.benchmark`, one module per stage; `common` holds what they share."""
