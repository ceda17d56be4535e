"""The user directory service (shop.users.v1.UserService)."""
