"""What the services and the gateway share: addresses, JSON logs, reflection and health, serving."""
