"""Helpers shared by the test suites: real processes on free loopback ports, grpcurl."""
