"""`townhall bench ...`: load generators an operator runs against a deployment."""
