"""Training from weak labels: data and cache, the two stages per fold, and the bundle."""
