"""Models for schemaName 'orders' (JSON): v1, v2. Generated -- do not edit."""
