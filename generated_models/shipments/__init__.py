"""Models for schemaName 'shipments' (AVRO): v1, v2. Generated -- do not edit."""
