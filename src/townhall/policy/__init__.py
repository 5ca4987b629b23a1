"""Who may do what, and how often: tokens, roles, rate limits, admission. Pure."""
