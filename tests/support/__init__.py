"""Test support: the fake engine, the raw-bytes and in-process clients, the test entry point."""
