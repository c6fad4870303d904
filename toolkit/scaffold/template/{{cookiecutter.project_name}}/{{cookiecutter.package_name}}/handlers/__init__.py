"""One handler per topic."""

{% for t in cookiecutter.topics | topic_plans -%}
from {{ cookiecutter.package_name }}.handlers.{{ t.module }} import {{ t.handler_class }}
{% endfor %}
__all__ = [{% for t in cookiecutter.topics | topic_plans %}"{{ t.handler_class }}"{% if not loop.last %}, {% endif %}{% endfor %}]
