"""``tailguard serve``: the binary protocol and HTTP over one deadline-aware scheduler."""
