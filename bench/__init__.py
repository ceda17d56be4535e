"""The benchmark behind ``make bench``: the gateway against a direct call and the reference yardstick."""
