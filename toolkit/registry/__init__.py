from toolkit.registry.base import (CompatibilityResult, RegisteredSchema, SchemaRegistry, SubjectContext,
                                    SubjectStrategy, schema_name_strategy, topic_value_strategy)

__all__ = ["CompatibilityResult", "RegisteredSchema", "SchemaRegistry", "SubjectContext", "SubjectStrategy",
           "schema_name_strategy", "topic_value_strategy"]
